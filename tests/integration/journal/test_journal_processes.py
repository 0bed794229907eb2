"""The journal and the environment lock against real processes: concurrency, SIGKILL, takeover."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.runs.audit import AuditLog
from orchestrator.runs.identity import parse_time, pid_alive, process_start_ticks
from orchestrator.runs.journal import Journal
from orchestrator.runs.lock import EnvironmentLock, EnvironmentLocked

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("worker.py")
REPO = Path(__file__).resolve().parents[3]
STEPS = ["render", "provision", "inventory", "deploy", "verify"]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "project" / ".orchestrate" / "dev"
    path.mkdir(parents=True)
    return path


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start_together(state_dir: Path, count: int, *extra: str) -> list[subprocess.Popen[str]]:
    """`count` lock-run workers, released at once when all of them are ready."""
    go = state_dir.parent / "go"
    workers = [spawn("lock-run", str(state_dir), str(go), *extra) for _ in range(count)]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "READY"
    go.touch()
    return workers


def finish(workers: list[subprocess.Popen[str]], timeout: float = 60) -> list[tuple[int, str]]:
    results = []
    for worker in workers:
        _, err = worker.communicate(timeout=timeout)
        results.append((worker.returncode, err))
    return results


def test_five_processes_take_the_lock_strictly_one_at_a_time(state_dir: Path) -> None:
    workers = start_together(state_dir, 5, "--wait", "60", "--hold", "0.3")
    results = finish(workers)
    assert [code for code, _ in results] == [0] * 5, results
    # the ones that had to wait said for whom, naming a pid
    waiting = [err for _, err in results if "waiting for lock held by" in err]
    assert len(waiting) >= 1
    assert any(f"pid {w.pid} since" in err for w in workers for err in waiting)
    # no overlap, proven from the journal's own timestamps
    with Journal.open(state_dir) as journal:
        runs = journal.runs(limit=None)
    assert len(runs) == 5 and all(r.state == "completed" for r in runs)
    spans = sorted((parse_time(r.started), parse_time(r.finished or "")) for r in runs)
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert end <= next_start, f"runs overlap: one ended {end}, the next started {next_start}"
    assert {r.pid for r in runs} == {w.pid for w in workers}


def test_with_wait_zero_the_others_get_lock_busy(state_dir: Path) -> None:
    workers = start_together(state_dir, 5, "--wait", "0", "--hold", "2")
    results = finish(workers)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 75, 75, 75, 75], results
    winner = next(w for w, (code, _) in zip(workers, results, strict=True) if code == 0)
    for code, err in results:
        if code == 75:
            assert "environment dev is locked by " in err and f"pid {winner.pid} since" in err
            assert "(orchestrate up dev" in err
    with Journal.open(state_dir) as journal:
        assert [r.pid for r in journal.runs()] == [winner.pid]


def test_sigkilled_holder_is_taken_over_and_its_run_is_interrupted(state_dir: Path) -> None:
    holder = spawn("hold", str(state_dir))
    assert holder.stdout is not None
    line = holder.stdout.readline().split()
    assert line[0] == "HELD", holder.stderr.read() if holder.stderr else ""
    run_id = line[1]
    with pytest.raises(EnvironmentLocked, match=f"pid {holder.pid} since .*run {run_id}"):
        EnvironmentLock(state_dir, command="orchestrate up dev").acquire(wait=0)

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert holder.returncode == -signal.SIGKILL

    lock = EnvironmentLock(state_dir, command="orchestrate up dev")
    started = time.monotonic()
    takeover = lock.acquire(wait=0)  # no waiting: the kernel dropped the dead holder's flock
    assert time.monotonic() - started < 2
    assert takeover is not None
    assert takeover.previous.pid == holder.pid and takeover.previous.run_id == run_id
    assert f"its process (pid {holder.pid}) is gone" in takeover.reason
    entries = AuditLog(state_dir).entries(command="lock takeover")
    assert len(entries) == 1 and entries[0].details["previous"]["pid"] == holder.pid
    lock.release()

    with Journal.open(state_dir) as journal:
        run = journal.get(run_id)
        assert run is not None and run.state == "interrupted"
        assert [s.state for s in run.steps] == ["completed", "running", "pending", "pending", "pending"]
        assert journal.resume_point(run_id, steps=STEPS).step == "provision"


@pytest.mark.parametrize(
    ("kill_after", "mid_step", "resume_at", "states"),
    [
        (0, False, "render", ["pending"] * 5),
        (2, False, "inventory", ["completed", "completed", "pending", "pending", "pending"]),
        (3, True, "deploy", ["completed", "completed", "completed", "running", "pending"]),
        (4, True, "verify", ["completed"] * 4 + ["running"]),
    ],
)
def test_sigkill_leaves_a_consistent_journal_and_the_right_resume_point(
    state_dir: Path, kill_after: int, mid_step: bool, resume_at: str, states: list[str]
) -> None:
    args = ["crash", str(state_dir), "--kill-after", str(kill_after)]
    worker = spawn(*args, *(["--mid-step"] if mid_step else []))
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == -signal.SIGKILL, err
    run_id = out.split()[1]

    # the database is intact after the kill
    conn = sqlite3.connect(state_dir / "journal.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()

    journal = Journal.open(state_dir)
    run = journal.get(run_id)
    assert run is not None
    assert run.stored_state == "running" and run.state == "interrupted"
    assert [s.state for s in run.steps] == states
    if mid_step:  # detail committed inside the step survived the kill
        assert run.steps[kill_after].detail == {"host_results": {"app-1": "ok"}}
    point = journal.resume_point(run_id, steps=STEPS)
    assert point.step == resume_at and point.done == tuple(STEPS[:kill_after])

    # resuming in another process continues the same run to completion
    resumed, _ = journal.resume(run_id, steps=STEPS)
    for name in resumed.pending_steps():
        with resumed.step(name):
            pass
    final = resumed.complete()
    assert final.id == run_id and final.state == "completed" and final.attempts == 2
    assert final.release == "1.0.0-0123456789ab"
    journal.close()


def test_runs_verb_reports_an_interrupted_run(state_dir: Path) -> None:
    project = state_dir.parent.parent
    (project / "inventories" / "dev").mkdir(parents=True)
    (project / "inventories" / "dev" / "environment.yml").write_text(
        (REPO / "inventories" / "dev" / "environment.yml").read_text())
    worker = spawn("crash", str(state_dir), "--kill-after", "1")
    out, _ = worker.communicate(timeout=30)
    run_id = out.split()[1]
    orchestrate = Path(sys.executable).with_name("orchestrate")
    result = subprocess.run([str(orchestrate), "--project-dir", str(project), "runs", "dev", "--json"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["env"] == "dev"
    assert [(r["id"], r["state"], r["finished"]) for r in data["runs"]] == [(run_id, "interrupted", None)]


def test_a_killed_child_is_dead_before_it_is_reaped() -> None:
    child = subprocess.Popen(["sleep", "60"])
    ticks = process_start_ticks(child.pid)
    assert pid_alive(child.pid, ticks)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(child.pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(child.pid, ticks)  # a zombie: never runs another step
    assert Path(f"/proc/{child.pid}").exists()  # not reaped yet
    child.wait()
