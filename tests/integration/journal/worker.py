"""A controller process for the journal and lock integration tests (run as a script, not imported).

    worker.py lock-run STATE_DIR GO_FILE --wait SECONDS --hold SECONDS
    worker.py hold STATE_DIR
    worker.py crash STATE_DIR --steps a,b,c --kill-after N [--mid-step]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from orchestrator.errors import LockBusy
from orchestrator.runs.journal import Journal
from orchestrator.runs.lock import EnvironmentLock

STEPS = ["render", "provision", "inventory", "deploy", "verify"]


def say(text: str) -> None:
    print(text, flush=True)


def lock_run(state_dir: Path, go_file: Path, wait: float | None, hold: float) -> int:
    say("READY")
    while not go_file.exists():  # a barrier: every worker asks for the lock at the same moment
        time.sleep(0.005)
    lock = EnvironmentLock(state_dir, command="orchestrate up dev", on_wait=lambda m: print(m, file=sys.stderr),
                           poll=0.02)
    try:
        lock.acquire(wait)
    except LockBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    try:
        with Journal.open(state_dir) as journal:
            run = journal.start_run("up", ["up", "dev"], steps=["work"])
            lock.set_run_id(run.id)
            with run.step("work"):
                time.sleep(hold)
            run.complete()
    finally:
        lock.release()
    return 0


def hold(state_dir: Path) -> int:
    lock = EnvironmentLock(state_dir, command="orchestrate up dev")
    lock.acquire(0)
    journal = Journal.open(state_dir)
    run = journal.start_run("up", ["up", "dev"], steps=STEPS)
    lock.set_run_id(run.id)
    with run.step("render"):
        pass
    with run.step("provision"):
        say(f"HELD {run.id}")
        time.sleep(600)  # SIGKILLed here, mid-step, holding the lock
    return 1


def crash(state_dir: Path, steps: list[str], kill_after: int, mid_step: bool) -> int:
    journal = Journal.open(state_dir)
    run = journal.start_run("up", ["up", "dev"], steps=steps, release="1.0.0-0123456789ab")
    say(f"RUN {run.id}")
    for index, name in enumerate(steps):
        if index == kill_after and not mid_step:
            os.kill(os.getpid(), signal.SIGKILL)  # between two steps: after one's commit, before the next
        with run.step(name) as step:
            step.update(host_results={"app-1": "ok"})
            if index == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # inside the step, after its detail was committed
    run.complete()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["lock-run", "hold", "crash"])
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("go_file", type=Path, nargs="?")
    parser.add_argument("--wait", type=float, default=None)
    parser.add_argument("--hold", type=float, default=0.3)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--mid-step", action="store_true")
    args = parser.parse_args()
    if args.mode == "lock-run":
        return lock_run(args.state_dir, args.go_file, args.wait, args.hold)
    if args.mode == "hold":
        return hold(args.state_dir)
    return crash(args.state_dir, args.steps.split(","), args.kill_after, args.mid_step)


if __name__ == "__main__":
    sys.exit(main())
