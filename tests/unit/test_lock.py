"""Unit tests of orchestrator.runs.lock: busy, waiting, stale-lock takeover, leases, heartbeat."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import ExitStatus, LockBusy
from orchestrator.runs.audit import AuditLog
from orchestrator.runs.identity import ProcessIdentity
from orchestrator.runs.lock import EnvironmentLock, EnvironmentLocked, Holder, LockLost, read_holder


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".orchestrate" / "dev"


def other_host(host: str = "builder-2") -> ProcessIdentity:
    return ProcessIdentity(user="deploy", host=host, pid=4242, pid_start=None)


class Clock:
    """A settable clock for leases."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_acquire_writes_holder_record_and_release_clears_it(state_dir: Path) -> None:
    lock = EnvironmentLock(state_dir, command="orchestrate up dev", run_id="20261123T181500-abcd")
    assert lock.acquire(wait=0) is None
    holder = read_holder(state_dir)
    me = ProcessIdentity.current()
    assert holder is not None
    assert (holder.user, holder.host, holder.pid, holder.command, holder.run_id) == (
        me.user, me.host, me.pid, "orchestrate up dev", "20261123T181500-abcd")
    assert holder.describe().startswith(f"{me.user}@{me.host} pid {me.pid} since ")
    assert "(orchestrate up dev, run 20261123T181500-abcd)" in holder.describe()
    assert lock.holds()
    lock.release()
    assert read_holder(state_dir) is None
    lock.release()  # idempotent


def test_wait_zero_raises_lock_busy_with_holder(state_dir: Path) -> None:
    with EnvironmentLock(state_dir, command="orchestrate up dev"):
        other = EnvironmentLock(state_dir, command="orchestrate deploy dev")
        started = time.monotonic()
        with pytest.raises(LockBusy) as info:
            other.acquire(wait=0)
        assert time.monotonic() - started < 1
        assert info.value.exit_status == ExitStatus.LOCK_BUSY == 75
        assert isinstance(info.value, EnvironmentLocked) and info.value.holder is not None
        assert "environment dev is locked by" in str(info.value)
        assert "(orchestrate up dev)" in str(info.value)
        assert not other.held


def test_waiting_reports_holder_then_gets_the_lock(state_dir: Path) -> None:
    first = EnvironmentLock(state_dir, command="orchestrate up dev")
    first.acquire(wait=0)
    messages: list[str] = []
    second = EnvironmentLock(state_dir, command="orchestrate up dev", on_wait=messages.append, poll=0.02)
    timer = threading.Timer(0.3, first.release)
    timer.start()
    started = time.monotonic()
    second.acquire()  # waits as long as it takes
    waited = time.monotonic() - started
    timer.join()
    assert 0.2 < waited < 5
    assert len(messages) == 1  # once per holder, not once per poll
    assert messages[0].startswith("waiting for lock held by ")
    assert f"pid {ProcessIdentity.current().pid} since " in messages[0]
    assert second.holds()
    second.release()


def test_wait_timeout(state_dir: Path) -> None:
    with EnvironmentLock(state_dir, command="a"):
        started = time.monotonic()
        with pytest.raises(EnvironmentLocked, match=r"after waiting 0\.3 s"):
            EnvironmentLock(state_dir, command="b", poll=0.05).acquire(wait=0.3)
        assert 0.25 < time.monotonic() - started < 3


def test_dead_local_holder_is_taken_over_and_audited(state_dir: Path) -> None:
    crashed = EnvironmentLock(state_dir, command="orchestrate up dev", run_id="20261123T181500-dead")
    crashed.acquire(wait=0)
    crashed._abandon()  # flock gone, record left: what SIGKILL leaves
    assert read_holder(state_dir) is not None
    successor = EnvironmentLock(state_dir, command="orchestrate up dev")
    takeover = successor.acquire(wait=0)
    assert takeover is not None and successor.takeover is takeover
    assert takeover.previous.run_id == "20261123T181500-dead"
    assert "no longer holds the lock file" in takeover.reason  # same pid, alive: it is us
    entries = AuditLog(state_dir).entries()
    assert [(e.command, e.outcome) for e in entries] == [("lock takeover", "taken_over")]
    assert entries[0].details["previous"]["run_id"] == "20261123T181500-dead"
    successor.release()


def test_record_of_a_dead_pid_names_it(state_dir: Path) -> None:
    me = ProcessIdentity.current()
    state_dir.mkdir(parents=True)
    stale = Holder(user=me.user, host=me.host, pid=2**22 + 7, command="orchestrate up dev", env="dev",
                   since="2026-11-23T18:15:00+00:00", lease_expires="2099-01-01T00:00:00+00:00", token="x")
    (state_dir / "lock.json").write_text(json.dumps(stale.as_dict()))
    lock = EnvironmentLock(state_dir, command="orchestrate up dev")
    takeover = lock.acquire(wait=0)
    assert takeover is not None
    assert f"its process (pid {2**22 + 7}) is gone" in takeover.reason  # lease ignored on this host
    lock.release()


def test_other_host_holder_blocks_until_its_lease_expires(state_dir: Path) -> None:
    clock = Clock()
    remote = EnvironmentLock(state_dir, command="orchestrate up dev", identity=other_host(), clock=clock,
                             heartbeat=None, lease=30, lock_path=state_dir / "lock-remote")
    remote.acquire(wait=0)
    local = EnvironmentLock(state_dir, command="orchestrate up dev", clock=clock, heartbeat=None)
    with pytest.raises(EnvironmentLocked, match="deploy@builder-2 pid 4242"):
        local.acquire(wait=0)
    clock.now += 20
    assert remote.renew()  # the heartbeat keeps it
    clock.now += 20
    with pytest.raises(EnvironmentLocked):
        local.acquire(wait=0)
    clock.now += 11  # 31 s after the last renewal
    takeover = local.acquire(wait=0)
    assert takeover is not None and "lease expired" in takeover.reason and "builder-2" in takeover.reason
    # the old holder finds out at its next check and cannot renew its way back in
    assert not remote.renew()
    with pytest.raises(LockLost, match="now held by"):
        remote.check()
    remote.release()  # must not remove the new holder's record
    assert local.holds()
    local.release()


def test_heartbeat_renews_the_lease(state_dir: Path) -> None:
    lock = EnvironmentLock(state_dir, command="x", lease=0.6, heartbeat=0.1)
    lock.acquire(wait=0)
    first = read_holder(state_dir)
    time.sleep(0.4)
    later = read_holder(state_dir)
    assert first is not None and later is not None
    assert later.lease_expires > first.lease_expires and later.token == first.token
    lock.check()
    lock.release()
    assert lock._thread is None


def test_set_run_id_updates_record(state_dir: Path) -> None:
    with EnvironmentLock(state_dir, command="orchestrate up dev") as lock:
        lock.set_run_id("20261123T181500-abcd")
        holder = read_holder(state_dir)
        assert holder is not None and holder.run_id == "20261123T181500-abcd"


def test_hold_context_manager_and_reacquire_guard(state_dir: Path) -> None:
    lock = EnvironmentLock(state_dir, command="x")
    with lock.hold(wait=0):
        assert lock.held
        with pytest.raises(Exception, match="already held"):
            lock.acquire(wait=0)
    assert not lock.held and read_holder(state_dir) is None


def test_heartbeat_must_be_shorter_than_lease(state_dir: Path) -> None:
    with pytest.raises(ValueError, match="shorter than the lease"):
        EnvironmentLock(state_dir, command="x", lease=10, heartbeat=10)


def test_damaged_holder_record_is_ignored(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "lock.json").write_text("{not json")
    assert read_holder(state_dir) is None
    with EnvironmentLock(state_dir, command="x") as lock:
        assert lock.takeover is None and lock.holds()


def test_locked_run_journals_audits_and_releases(state_dir: Path) -> None:
    from orchestrator.runs.journal import Journal
    from orchestrator.runs.session import locked_run

    with locked_run(state_dir, command="up", argv=["up", "dev"], steps=["render", "deploy"],
                    release="1.0.0-abc", wait=0) as session:
        holder = read_holder(state_dir)
        assert holder is not None and holder.run_id == session.run.id
        assert holder.command == "orchestrate up dev"
        session.run.execute([("render", lambda h: None), ("deploy", lambda h: None)], complete=False)
    assert read_holder(state_dir) is None and not session.lock.held
    record = session.final
    assert record is not None and record.state == "completed"
    (entry,) = AuditLog(state_dir).entries()
    assert (entry.command, entry.outcome, entry.run_id, entry.release) == ("up", "completed", record.id, "1.0.0-abc")

    # a failing body fails the run with the error's exit status, audits it, and releases
    from orchestrator.errors import HealthGateFailed

    with (
        pytest.raises(HealthGateFailed),
        locked_run(state_dir, command="up", argv=["up", "dev"], steps=["deploy"], wait=0) as failing,
        failing.run.step("deploy"),
    ):
        raise HealthGateFailed("app-2 failed its health check; rolled back")
    failed = failing.final
    assert failed is not None and failed.state == "failed" and failed.exit_code == 3
    assert AuditLog(state_dir).entries(limit=1)[0].outcome == "failed"
    assert read_holder(state_dir) is None

    # resuming it continues the same run
    with locked_run(state_dir, command="up", argv=["up", "dev"], steps=["deploy"], resume=failed.id,
                    wait=0) as again:
        assert again.resume_point is not None and again.resume_point.step == "deploy"
        again.run.execute([("deploy", lambda h: None)], complete=False)
    assert Journal.open(state_dir).get(failed.id).state == "completed"  # type: ignore[union-attr]
    assert AuditLog(state_dir).entries(limit=1)[0].details["resumed_at"] == "deploy"


def test_locked_run_busy_is_audited(state_dir: Path) -> None:
    from orchestrator.runs.session import locked_run

    with (
        EnvironmentLock(state_dir, command="orchestrate up dev"),
        pytest.raises(EnvironmentLocked),
        locked_run(state_dir, command="up", argv=["up", "dev"], wait=0),
    ):
        pass
    (entry,) = AuditLog(state_dir).entries()
    assert entry.outcome == "lock_busy" and entry.details["holder"]["command"] == "orchestrate up dev"
