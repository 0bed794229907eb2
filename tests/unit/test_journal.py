"""Unit tests of orchestrator.runs.journal: runs, steps, resume points, host transitions."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from orchestrator.errors import ExitStatus, Interrupted
from orchestrator.runs.identity import ProcessIdentity, new_run_id, parse_time, pid_alive, process_start_ticks
from orchestrator.runs.journal import Journal, JournalError, NotResumable, ResumeRefusal, locate_run

STEPS = ["render", "provision", "inventory", "deploy", "verify"]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".orchestrate" / "dev"


@pytest.fixture
def journal(state_dir: Path) -> Journal:
    j = Journal.open(state_dir)
    yield j
    j.close()


def dead_identity() -> ProcessIdentity:
    """This host and pid, but another start time: what a dead process whose pid was reused looks like."""
    me = ProcessIdentity.current()
    return ProcessIdentity(user=me.user, host=me.host, pid=me.pid, pid_start=(me.pid_start or 0) + 12345)


def start_dead_run(state_dir: Path, steps: list[str], completed: int) -> str:
    """A run whose owner died after `completed` steps, while the next one was running."""
    live = Journal.open(state_dir)
    run = live.start_run("up", ["up", "dev"], steps=steps, release="1.0.0-abc")
    for name in steps[:completed]:
        with run.step(name):
            pass
    if completed < len(steps):
        run._begin_step(steps[completed], {})
    live.close()
    # re-own the run by a dead process: same host and pid, another start time (a reused pid)
    conn = sqlite3.connect(state_dir / "journal.db")
    conn.execute("UPDATE runs SET pid_start=? WHERE id=?", (dead_identity().pid_start, run.id))
    conn.commit()
    conn.close()
    return run.id


def test_open_creates_wal_database(state_dir: Path, journal: Journal) -> None:
    assert (state_dir / "journal.db").exists()
    conn = sqlite3.connect(state_dir / "journal.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_run_ids_are_sortable_and_unique() -> None:
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) > 190  # 4 hex digits per second; collisions are retried on insert
    assert all(len(i) == len("20261123T181500-abcd") and i[8] == "T" for i in ids)


def test_step_writes_running_before_and_completed_after(state_dir: Path, journal: Journal) -> None:
    run = journal.start_run("up", ["up", "dev"], steps=STEPS)
    other = Journal.open(state_dir)  # a second connection: what another process would read
    with run.step("render") as step:
        seen = other.get(run.id)
        assert seen is not None
        assert [s.state for s in seen.steps][:2] == ["running", "pending"]
        step.update(progress="half")  # committed now, visible before the step ends
        assert other.get(run.id).steps[0].detail == {"progress": "half"}  # type: ignore[union-attr]
        step.detail["files"] = 3
    final = other.get(run.id)
    assert final is not None
    first = final.steps[0]
    assert first.state == "completed"
    assert first.detail == {"progress": "half", "files": 3}
    assert first.duration is not None and first.duration >= 0
    assert first.attempts == 1
    other.close()


def test_failed_step_records_error_and_propagates(journal: Journal) -> None:
    run = journal.start_run("up", steps=STEPS)
    with pytest.raises(RuntimeError, match="terraform exploded"), run.step("render"):
        raise RuntimeError("terraform exploded")
    step = run.record().steps[0]
    assert step.state == "failed"
    assert step.detail["error"] == "terraform exploded"
    assert run.record().state == "running"  # the caller decides what a failed step means
    with run.step("render"):  # a retry in place
        pass
    retried = run.record().steps[0]
    assert retried.state == "completed" and retried.attempts == 2


def test_steps_run_in_declared_order(journal: Journal) -> None:
    run = journal.start_run("up", steps=STEPS)
    with pytest.raises(JournalError, match="cannot start before step 'render'"), run.step("provision"):
        pass
    with pytest.raises(JournalError, match="has no step 'bogus'"), run.step("bogus"):
        pass
    with (
        run.step("render"),
        pytest.raises(JournalError, match=r"before step 'render' \(running\)"),
        run.step("provision"),
    ):
        pass
    with pytest.raises(JournalError, match="'render' is completed; only a pending or failed step"), run.step("render"):
        pass


def test_skip_counts_as_done(journal: Journal) -> None:
    run = journal.start_run("up", steps=["render", "provision"])
    with run.step("render"):
        pass
    run.skip("provision", "plan has no changes")
    assert run.record().steps[1].detail == {"skipped": "plan has no changes"}
    assert run.complete().state == "completed"


def test_dynamic_steps_are_appended(journal: Journal) -> None:
    run = journal.start_run("heal restart")
    for name in ("decide", "restart", "probe"):
        with run.step(name):
            pass
    record = run.complete()
    assert [(s.seq, s.name, s.state) for s in record.steps] == [
        (0, "decide", "completed"), (1, "restart", "completed"), (2, "probe", "completed")]


def test_complete_refused_until_every_step_is_done(journal: Journal) -> None:
    run = journal.start_run("up", steps=["render", "deploy"])
    with run.step("render"):
        pass
    with pytest.raises(JournalError, match=r"steps not done: deploy \(pending\)"):
        run.complete()
    with run.step("deploy"):
        pass
    record = run.complete()
    assert record.state == "completed" and record.exit_code == 0 and record.finished is not None
    with pytest.raises(JournalError, match="is completed, not running"):
        run.fail("late")


def test_run_context_manager_maps_outcomes(journal: Journal) -> None:
    with journal.start_run("up", steps=["a"]) as run, run.step("a"):
        pass
    assert run.record().state == "completed"

    with pytest.raises(ValueError), journal.start_run("up", steps=["a"]) as failing:
        raise ValueError("bad input")
    assert failing.record().state == "failed"
    assert failing.record().error == "bad input"

    with pytest.raises(KeyboardInterrupt), journal.start_run("up", steps=["a"]) as stopped:
        raise KeyboardInterrupt
    record = stopped.record()
    assert record.state == "interrupted" and record.exit_code == int(ExitStatus.INTERRUPTED)

    # an interrupt that cleaned up first (a deploy put its hosts back) says what it did
    with pytest.raises(Interrupted), journal.start_run("deploy", steps=["deploy"]) as ctrl_c, ctrl_c.step("deploy"):
        raise Interrupted("deploy of 0.2.0-abc stopped by SIGINT; no host had switched")
    record = ctrl_c.record()
    assert (record.state, record.exit_code) == ("interrupted", int(ExitStatus.INTERRUPTED))
    assert record.error == "deploy of 0.2.0-abc stopped by SIGINT; no host had switched"


def test_runs_newest_first_with_limit_and_contract_keys(journal: Journal) -> None:
    ids = []
    for _ in range(4):
        run = journal.start_run("up", steps=[])
        ids.append(run.complete().id)
    listed = journal.runs(limit=3)
    assert [r.id for r in listed] == list(reversed(ids))[:3]
    summary = listed[0].to_summary()
    assert list(summary)[:6] == ["id", "command", "state", "started", "finished", "release"]
    assert parse_time(summary["finished"]) >= parse_time(summary["started"])


def test_second_live_run_is_refused(journal: Journal) -> None:
    journal.start_run("up", steps=["a"])
    with pytest.raises(JournalError, match="is still running"):
        journal.start_run("up", steps=["a"])


def test_dead_owner_reads_as_interrupted_with_resume_point(state_dir: Path) -> None:
    run_id = start_dead_run(state_dir, STEPS, completed=2)
    journal = Journal.open(state_dir)
    record = journal.get(run_id)
    assert record is not None
    assert record.stored_state == "running" and record.state == "interrupted"
    point = journal.resume_point(run_id, steps=STEPS)
    assert point.step == "inventory" and point.seq == 2 and point.done == ("render", "provision")
    # a new run reaps it: the interrupted state is persisted
    journal.start_run("up", steps=[]).complete()
    persisted = journal.get(run_id)
    assert persisted is not None and persisted.stored_state == "interrupted"
    assert "ended without finishing" in (persisted.error or "")
    journal.close()


def test_resume_continues_the_same_run(state_dir: Path) -> None:
    run_id = start_dead_run(state_dir, STEPS, completed=3)
    journal = Journal.open(state_dir)
    run, point = journal.resume(run_id, steps=STEPS)
    assert point.step == "deploy"
    assert run.pending_steps() == ["deploy", "verify"]
    assert run.is_done("render") and not run.is_done("deploy")
    for name in run.pending_steps():
        with run.step(name):
            pass
    record = run.complete()
    assert record.id == run_id and record.state == "completed" and record.attempts == 2
    assert [s.attempts for s in record.steps] == [1, 1, 1, 2, 1]  # deploy ran twice
    assert record.release == "1.0.0-abc"
    journal.close()


@pytest.mark.parametrize(
    ("setup", "reason", "status"),
    [
        ("unknown", ResumeRefusal.UNKNOWN, ExitStatus.BAD_INPUT),
        ("completed", ResumeRefusal.COMPLETED, ExitStatus.BAD_INPUT),
        ("running", ResumeRefusal.RUNNING, ExitStatus.LOCK_BUSY),
        ("steps_changed", ResumeRefusal.STEPS_CHANGED, ExitStatus.BAD_INPUT),
        ("plan_changed", ResumeRefusal.PLAN_CHANGED, ExitStatus.BAD_INPUT),
        ("active_run", ResumeRefusal.ACTIVE_RUN, ExitStatus.LOCK_BUSY),
    ],
)
def test_resume_refusals_say_why(state_dir: Path, setup: str, reason: ResumeRefusal, status: ExitStatus) -> None:
    journal = Journal.open(state_dir)
    steps = STEPS
    plan = None
    if setup == "unknown":
        run_id = "20990101T000000-0000"
    elif setup == "completed":
        run_id = journal.start_run("up", steps=[]).complete().id
    elif setup == "running":
        run_id = journal.start_run("up", steps=STEPS).id
    else:
        run_id = start_dead_run(state_dir, STEPS, completed=1)
        if setup == "steps_changed":
            steps = [*STEPS, "smoke-test"]
        elif setup == "plan_changed":
            conn = sqlite3.connect(state_dir / "journal.db")
            conn.execute("UPDATE runs SET plan_sha256=? WHERE id=?", ("a" * 64, run_id))
            conn.commit()
            conn.close()
            plan = "b" * 64
        else:
            journal.start_run("up", steps=["a"])  # alive: this process
    with pytest.raises(NotResumable) as info:
        journal.resume_point(run_id, steps=steps, plan_sha256=plan)
    assert info.value.reason == reason
    assert info.value.exit_status == status
    assert run_id in str(info.value) or setup == "active_run"
    with pytest.raises(NotResumable):
        journal.resume(run_id, steps=steps, plan_sha256=plan)
    journal.close()


def test_host_transitions_follow_the_deployment_state_machine(journal: Journal) -> None:
    run = journal.start_run("deploy", steps=["deploy"])
    for state in ("backed_up", "staged", "switched", "verified"):
        run.host_transition("app-1", state, release="1.0.0-abc")
    with pytest.raises(JournalError, match="illegal transition of host app-2: idle -> switched"):
        run.host_transition("app-2", "switched")
    run.host_transition("app-2", "failed")
    run.host_transition("app-2", "rolled_back")
    with pytest.raises(JournalError, match="rolled_back -> staged"):
        run.host_transition("app-2", "staged")
    assert run.host_states() == {"app-1": "verified", "app-2": "rolled_back"}
    moves = journal.host_transitions(run.id)
    assert [(m.host, m.from_state, m.to_state) for m in moves][:2] == [
        ("app-1", "idle", "backed_up"), ("app-1", "backed_up", "staged")]


def test_transition_validator_is_pluggable(state_dir: Path) -> None:
    pairs = Journal.open(state_dir, transitions={("idle", "up"), ("up", "down")})
    run = pairs.start_run("x")
    run.host_transition("h", "up")
    with pytest.raises(JournalError):
        run.host_transition("h", "sideways")
    run.host_transition("h", "down", expect_from="up")
    with pytest.raises(JournalError, match="expected 'up'"):
        run.host_transition("h", "down", expect_from="up")
    run.complete()
    pairs.close()

    calls: list[tuple[str, str]] = []

    def only_forward(a: str, b: str) -> bool:
        calls.append((a, b))
        return b > a

    predicate = Journal.open(state_dir, transitions=only_forward, initial_host_state="a")
    run2 = predicate.start_run("x")
    run2.host_transition("h", "b")
    with pytest.raises(JournalError):
        run2.host_transition("h", "a")
    assert calls == [("a", "b"), ("b", "a")]
    predicate.close()


def test_parallel_host_transitions_from_threads(journal: Journal) -> None:
    run = journal.start_run("deploy", steps=["deploy"])
    errors: list[BaseException] = []

    def walk(host: str) -> None:
        try:
            for state in ("backed_up", "staged", "switched", "verified"):
                run.host_transition(host, state)
        except BaseException as exc:  # collected: a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=walk, args=(f"app-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert run.host_states() == {f"app-{i}": "verified" for i in range(8)}
    assert len(journal.host_transitions(run.id)) == 32


def test_another_process_cannot_drive_a_run(state_dir: Path, journal: Journal) -> None:
    run = journal.start_run("up", steps=["a"])
    me = ProcessIdentity.current()
    intruder = Journal(state_dir / "journal.db", env="dev",
                       identity=ProcessIdentity(me.user, me.host, 1, process_start_ticks(1)))
    from orchestrator.runs.journal import Run

    with pytest.raises(JournalError, match="belongs to"), Run(intruder, run.id).step("a"):
        pass
    intruder.close()


def test_locate_run_finds_the_environment(tmp_path: Path) -> None:
    root = tmp_path / ".orchestrate"
    ids = {}
    for env in ("dev", "staging"):
        with Journal.open(root / env) as j:
            ids[env] = j.start_run("up").complete().id
    assert locate_run(root, ids["staging"]) == root / "staging"
    assert locate_run(root, "20990101T000000-0000") is None
    assert locate_run(tmp_path / "missing", ids["dev"]) is None


def test_pid_alive() -> None:
    assert pid_alive(os.getpid(), process_start_ticks(os.getpid()))
    assert not pid_alive(os.getpid(), (process_start_ticks(os.getpid()) or 0) + 1)
    assert not pid_alive(0)
    assert not pid_alive(2**22 + 7)  # above pid_max: never a live process


def test_execute_runs_only_the_steps_not_done(state_dir: Path) -> None:
    calls: list[str] = []

    def stage(name: str, fail: bool = False):  # type: ignore[no-untyped-def]
        def run_stage(handle) -> None:  # type: ignore[no-untyped-def]
            calls.append(name)
            handle.detail["ran"] = name
            if fail:
                raise RuntimeError(f"{name} broke")
        return run_stage

    journal = Journal.open(state_dir)
    run = journal.start_run("up", steps=["render", "provision", "deploy"])
    with pytest.raises(RuntimeError, match="provision broke"):
        run.execute([("render", stage("render")), ("provision", stage("provision", fail=True)),
                     ("deploy", stage("deploy"))])
    run.fail("provision broke")
    assert calls == ["render", "provision"]
    resumed, point = journal.resume(run.id, steps=["render", "provision", "deploy"])
    assert point.step == "provision"
    record = resumed.execute([("render", stage("render")), ("provision", stage("provision")),
                              ("deploy", stage("deploy"))])
    assert calls == ["render", "provision", "provision", "deploy"]
    assert record.state == "completed"
    assert [s.detail["ran"] for s in record.steps] == ["render", "provision", "deploy"]
    journal.close()


def test_guard_runs_before_every_step(journal: Journal) -> None:
    run = journal.start_run("up", steps=["a", "b"])
    allowed = [True]

    def guard() -> None:
        if not allowed[0]:
            raise JournalError("lost the lock")

    run.guard = guard
    with run.step("a"):
        pass
    allowed[0] = False
    with pytest.raises(JournalError, match="lost the lock"), run.step("b"):
        pass
    assert [s.state for s in run.record().steps] == ["completed", "pending"]  # never started
