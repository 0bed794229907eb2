"""The coordination of environments shared through S3 (orchestrator.runs.backend, s3lock,
s3journal, s3audit), on an in-memory bucket with S3's conditional writes: two controllers
serialise on one lock, see each other's runs and audit entries, and resume each other's runs.
tests/integration/terraform/test_shared_coordination.py runs the same through the CLI on moto."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from orchestrator.config.loader import Project
from orchestrator.errors import ExitStatus
from orchestrator.runs.audit import AuditError
from orchestrator.runs.backend import LocalCoordination, S3Coordination, coordination_for, shared_prefix
from orchestrator.runs.identity import ProcessIdentity
from orchestrator.runs.journal import JournalError
from orchestrator.runs.lock import EnvironmentLocked, LockLost
from orchestrator.runs.s3audit import S3AuditLog
from orchestrator.runs.s3lock import S3EnvironmentLock
from orchestrator.runs.session import locked_run
from tests.support.objectstore import MemoryObjectStore

PREFIX = "prod/terraform.tfstate.orchestrate/"
LOCK = PREFIX + "lock.json"


def far(host: str = "controller-2", pid: int = 4242) -> ProcessIdentity:
    """A process on another controller (its liveness cannot be checked from here)."""
    return ProcessIdentity(user="deploy", host=host, pid=pid, pid_start=None)


@pytest.fixture
def store() -> MemoryObjectStore:
    return MemoryObjectStore()


def shared(store: MemoryObjectStore, tmp_path: Path, name: str = "a") -> S3Coordination:
    return S3Coordination(store, PREFIX, env="prod", state_dir=tmp_path / name / ".orchestrate" / "prod")  # type: ignore[arg-type]


def test_an_environment_with_remote_state_is_coordinated_beside_it(project_copy: Path) -> None:
    project = Project(project_copy)
    prod = coordination_for(project.load("prod"))
    assert isinstance(prod, S3Coordination)
    assert prod.store.bucket == "orchestrate-prod-state" and prod.prefix == "prod/terraform.tfstate.orchestrate/"
    assert prod.describe() == "shared in s3://orchestrate-prod-state/prod/terraform.tfstate.orchestrate/"
    dev = coordination_for(project.load("dev"))
    assert isinstance(dev, LocalCoordination) and dev.state_dir == project_copy / ".orchestrate" / "dev"
    assert shared_prefix(project.load("prod").env.terraform.backend) == prod.prefix  # type: ignore[arg-type]


def test_the_lock_is_one_object_created_only_when_absent(store: MemoryObjectStore) -> None:
    mine = S3EnvironmentLock(store, LOCK, command="orchestrate provision prod", env="prod", heartbeat=None)  # type: ignore[arg-type]
    assert mine.acquire(wait=0) is None
    record = json.loads(store.objects[LOCK][0])
    me = ProcessIdentity.current()
    assert (record["user"], record["host"], record["pid"], record["command"]) == (
        me.user, me.host, me.pid, "orchestrate provision prod")
    other = S3EnvironmentLock(store, LOCK, command="orchestrate deploy prod", env="prod", identity=far(),  # type: ignore[arg-type]
                              heartbeat=None)
    with pytest.raises(EnvironmentLocked) as busy:
        other.acquire(wait=0)
    assert busy.value.exit_status == ExitStatus.LOCK_BUSY
    assert f"environment prod is locked by {me.user}@{me.host} pid {me.pid} since " in str(busy.value)
    assert "(orchestrate provision prod)" in str(busy.value) and "s3://state-bucket/" + LOCK in str(busy.value)
    mine.release()
    assert LOCK not in store.objects
    assert other.acquire(wait=0) is None
    other.release()


def test_racing_controllers_get_the_lock_one_at_a_time(store: MemoryObjectStore) -> None:
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def contend(index: int) -> None:
        lock = S3EnvironmentLock(store, LOCK, command=f"c{index}", env="prod", identity=far(f"c-{index}"),  # type: ignore[arg-type]
                                 heartbeat=None)
        barrier.wait()
        try:
            lock.acquire(wait=0)
        except EnvironmentLocked:
            return
        winners.append(index)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_an_expired_lease_is_taken_over_by_s3s_clock_and_the_old_holder_learns_it(store: MemoryObjectStore,
                                                                                   tmp_path: Path) -> None:
    audit = S3AuditLog(store, PREFIX, env="prod")  # type: ignore[arg-type]
    first = S3EnvironmentLock(store, LOCK, command="orchestrate up prod", env="prod", identity=far("gone-host"),  # type: ignore[arg-type]
                              lease=30, heartbeat=None)
    first.acquire(wait=0)
    second = S3EnvironmentLock(store, LOCK, command="orchestrate deploy prod", env="prod", lease=30, heartbeat=None,  # type: ignore[arg-type]
                               audit=audit)
    store.advance(29)
    with pytest.raises(EnvironmentLocked):
        second.acquire(wait=0)  # a live lease is never displaced
    store.advance(2)
    takeover = second.acquire(wait=0)
    assert takeover is not None and takeover.previous.host == "gone-host"
    assert "its lease expired at" in takeover.reason and "(S3's clock)" in takeover.reason
    entry = audit.entries(1)[0]
    assert (entry.command, entry.outcome) == ("lock takeover", "taken_over")
    assert entry.details["previous"]["host"] == "gone-host"
    with pytest.raises(LockLost, match="it is now held by"):
        first.check()
    first.release()  # not ours any more: the new holder's record stays
    assert second.holds()
    second.release()


def test_a_holder_on_this_host_whose_process_is_gone_is_taken_over_at_once(store: MemoryObjectStore) -> None:
    me = ProcessIdentity.current()
    dead = ProcessIdentity(user=me.user, host=me.host, pid=2**22 + 17, pid_start=None)
    S3EnvironmentLock(store, LOCK, command="x", env="prod", identity=dead, heartbeat=None).acquire(wait=0)  # type: ignore[arg-type]
    takeover = S3EnvironmentLock(store, LOCK, command="y", env="prod", heartbeat=None).acquire(wait=0)  # type: ignore[arg-type]
    assert takeover is not None and f"pid {dead.pid}" in takeover.reason


def test_two_controllers_see_one_history_and_resume_each_others_runs(store: MemoryObjectStore, tmp_path: Path) -> None:
    a, b = shared(store, tmp_path, "a"), shared(store, tmp_path, "b")
    with pytest.raises(RuntimeError), locked_run(a, command="provision", argv=["provision", "prod", "--yes"],
                                                 steps=["plan", "apply"], env="prod") as session:
        with session.run.step("plan") as step:
            step.detail["changes"] = 3
        failed_id = session.run.id
        raise RuntimeError("apply failed")
    # controller b: a's run in the shared journal, failed, resumable from here
    with b.journal() as journal:
        record = journal.get(failed_id)
        assert record is not None and record.state == "failed" and [s.state for s in record.steps] == [
            "completed", "pending"]
    with locked_run(b, command="provision", argv=["provision", "prod", "--yes"], steps=["plan", "apply"],
                    resume=failed_id, env="prod") as session:
        assert session.resume_point is not None and session.resume_point.step == "apply"
        with session.run.step("apply"):
            pass
    with a.journal() as journal:
        done = journal.get(failed_id)
        assert done is not None and done.state == "completed" and done.attempts == 2
    assert not list((tmp_path / "a").rglob("journal.db"))  # private copies are removed
    # the audit log in either: both outcomes, one intact chain
    for coordination in (a, b):
        log = coordination.audit()
        assert [(e.command, e.outcome) for e in log.entries()] == [("provision", "completed"), ("provision", "failed")]
        assert log.verify() == 2


def test_a_run_stored_running_is_alive_only_while_the_lock_names_it(store: MemoryObjectStore, tmp_path: Path) -> None:
    a, b = shared(store, tmp_path, "a"), shared(store, tmp_path, "b")
    with pytest.raises(JournalError, match=r"changed in s3://.* by another controller"), \
            locked_run(a, command="up", argv=["up", "prod"], steps=["build", "deploy"], env="prod") as session:
        run_id = session.run.id
        with b.journal() as journal:
            assert journal.get(run_id).state == "running"  # type: ignore[union-attr]
        with pytest.raises(EnvironmentLocked), \
                locked_run(b, command="up", argv=["up", "prod"], steps=["build", "deploy"], wait=0, env="prod"):
            pass
        # controller a hangs: its record says `running`, its lease runs out
        session.lock._stop.set()  # type: ignore[attr-defined]
        store.advance(31)
        with b.journal() as journal:
            assert journal.get(run_id).state == "interrupted"  # type: ignore[union-attr]
        with locked_run(b, command="up", argv=["up", "prod"], steps=["build", "deploy"], resume=run_id,
                        env="prod") as again:
            assert again.takeover is not None and again.resume_point is not None
            for name in ("build", "deploy"):
                with again.run.step(name):
                    pass
        with b.journal() as journal:
            assert journal.get(run_id).state == "completed"  # type: ignore[union-attr]
        # a wakes up: its lock check stops it before the next step...
        with pytest.raises(LockLost):
            session.run.guard()  # type: ignore[misc]
        # ...and a controller that would not check still cannot write over b's record
        session.run.guard = None
        with session.run.step("build"):
            pass
    with b.journal() as journal:
        assert journal.get(run_id).state == "completed"  # type: ignore[union-attr]


def test_appends_from_two_controllers_form_one_chain(store: MemoryObjectStore) -> None:
    first, second = S3AuditLog(store, PREFIX, env="prod"), S3AuditLog(store, PREFIX, env="prod")  # type: ignore[arg-type]
    first.record(command="up", outcome="completed")
    head = store.objects[PREFIX + "audit/HEAD"]
    second.record(command="deploy", outcome="failed")
    store.objects[PREFIX + "audit/HEAD"] = head  # a HEAD that lags only costs a read
    first.record(command="lock takeover", outcome="taken_over")
    assert [e.id for e in second.entries()] == [3, 2, 1]
    assert [e.command for e in first.entries(2)] == ["lock takeover", "deploy"]
    assert first.verify() == 3


def test_an_edited_or_truncated_shared_audit_log_fails_verification(store: MemoryObjectStore) -> None:
    log = S3AuditLog(store, PREFIX, env="prod")  # type: ignore[arg-type]
    for outcome in ("completed", "failed", "completed"):
        log.record(command="up", outcome=outcome)
    key = PREFIX + "audit/000000000002.json"
    body, etag, modified = store.objects[key]
    store.objects[key] = (body.replace(b'"failed"', b'"completed"'), etag, modified)
    with pytest.raises(AuditError, match=r"audit entry 2 .* does not match"):
        log.verify()
    store.objects[key] = (body, etag, modified)
    del store.objects[PREFIX + "audit/000000000003.json"]
    with pytest.raises(AuditError, match="HEAD names entry 3, but the log ends at entry 2"):
        log.verify()
