"""Property test of the journal: any sequence of start/step/skip/complete/fail/kill/resume and host
transitions leaves a consistent journal, and illegal transitions are always refused.

Each simulated controller process is a real `sleep` process whose pid the journal records as the
owner; "kill" SIGKILLs it, so liveness is decided the way it is in production.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orchestrator.models.process import is_allowed
from orchestrator.runs.identity import ProcessIdentity, process_start_ticks
from orchestrator.runs.journal import Journal, JournalError, NotResumable, Run

STEPS = ["render", "provision", "deploy", "verify"]
HOSTS = ["app-1", "app-2"]
HOST_STATES = ["idle", "backed_up", "staged", "switched", "verified", "failed", "rolled_back"]


class JournalMachine(RuleBasedStateMachine):
    """Model: per run, the expected state and steps; per host, the expected deployment state."""

    def __init__(self) -> None:
        super().__init__()
        # on tmpfs when there is one: hundreds of fsync'ed commits per example, same semantics
        shm = Path("/dev/shm")
        self.tmp = Path(tempfile.mkdtemp(prefix="journal-prop-", dir=shm if shm.is_dir() else None))
        self.state_dir = self.tmp / "dev"
        self.reader = Journal.open(self.state_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.journal: Journal | None = None
        self.run: Run | None = None
        self.open_step: contextlib.ExitStack | None = None
        self.abandoned: list[Any] = []  # steps cut short by a kill: kept alive, never exited
        self.model_runs: dict[str, str] = {}  # run id -> expected effective state
        self.model_steps: dict[str, list[str]] = {}
        self.model_hosts: dict[str, dict[str, str]] = {}

    # -- helpers -------------------------------------------------------------------------

    def _spawn(self) -> Journal:
        self.proc = subprocess.Popen(["sleep", "600"])
        me = ProcessIdentity.current()
        identity = ProcessIdentity(me.user, me.host, self.proc.pid, process_start_ticks(self.proc.pid))
        self.journal = Journal(self.state_dir / "journal.db", env="dev", identity=identity)
        return self.journal

    def teardown(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        if self.journal is not None:
            self.journal.close()
        self.reader.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _next_step(self, run_id: str) -> str | None:
        steps = self.model_steps[run_id]
        return next((STEPS[i] for i, s in enumerate(steps) if s not in ("completed", "skipped")), None)

    # -- rules -----------------------------------------------------------------------------

    @precondition(lambda self: self.run is None)
    @rule()
    def start(self) -> None:
        journal = self._spawn() if self.journal is None else self.journal
        self.run = journal.start_run("up", ["up", "dev"], steps=STEPS)
        self.model_runs[self.run.id] = "running"
        self.model_steps[self.run.id] = ["pending"] * len(STEPS)
        self.model_hosts[self.run.id] = {}

    @precondition(lambda self: self.run is not None and self.open_step is None)
    @rule(name=st.sampled_from(STEPS))
    def begin_step(self, name: str) -> None:
        assert self.run is not None
        expected_ok = self._next_step(self.run.id) == name
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.run.step(name))
        except JournalError:
            assert not expected_ok, f"step {name} should have started"
            return
        assert expected_ok, f"step {name} started out of order"
        self.open_step = stack
        self.model_steps[self.run.id][STEPS.index(name)] = "running"

    @precondition(lambda self: self.open_step is not None)
    @rule(ok=st.booleans())
    def end_step(self, ok: bool) -> None:
        assert self.run is not None and self.open_step is not None
        index = self.model_steps[self.run.id].index("running")
        stack, self.open_step = self.open_step, None
        if ok:
            stack.close()
        else:
            with contextlib.suppress(RuntimeError):  # the step re-raises what failed it
                stack.__exit__(RuntimeError, RuntimeError("step failed"), None)
        self.model_steps[self.run.id][index] = "completed" if ok else "failed"

    @precondition(lambda self: self.run is not None and self.open_step is None)
    @rule(name=st.sampled_from(STEPS))
    def skip(self, name: str) -> None:
        assert self.run is not None
        steps = self.model_steps[self.run.id]
        expected_ok = self._next_step(self.run.id) == name and steps[STEPS.index(name)] == "pending"
        try:
            self.run.skip(name, "nothing to do")
        except JournalError:
            assert not expected_ok
            return
        assert expected_ok
        steps[STEPS.index(name)] = "skipped"

    @precondition(lambda self: self.run is not None and self.open_step is None)
    @rule()
    def complete(self) -> None:
        assert self.run is not None
        expected_ok = all(s in ("completed", "skipped") for s in self.model_steps[self.run.id])
        try:
            self.run.complete()
        except JournalError:
            assert not expected_ok
            return
        assert expected_ok
        self.model_runs[self.run.id] = "completed"
        self.run = None

    @precondition(lambda self: self.run is not None and self.open_step is None)
    @rule()
    def fail(self) -> None:
        assert self.run is not None
        self.run.fail("gave up")
        self.model_runs[self.run.id] = "failed"
        self.run = None

    @precondition(lambda self: self.proc is not None)
    @rule()
    def kill(self) -> None:
        assert self.proc is not None and self.journal is not None
        self.proc.kill()
        self.proc.wait()
        self.journal.close()
        self.proc, self.journal = None, None
        event("killed mid-step" if self.open_step is not None else "killed between steps")
        if self.open_step is not None:
            self.abandoned.append(self.open_step)
            self.open_step = None
        if self.run is not None:
            self.model_runs[self.run.id] = "interrupted"
            self.run = None

    @precondition(lambda self: self.run is None and self.open_step is None)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        # in creation order, not sorted: run ids carry the time and random hex, so a sorted order
        # would differ when Hypothesis replays an example, and the replay with it (a flaky strategy)
        run_id = data.draw(st.sampled_from(list(self.model_runs)) if self.model_runs else st.just("nope"))
        journal = self._spawn() if self.journal is None else self.journal
        expected_ok = self.model_runs.get(run_id) in ("failed", "interrupted")
        try:
            run, point = journal.resume(run_id, steps=STEPS)
        except NotResumable:
            assert not expected_ok, f"run {run_id} ({self.model_runs.get(run_id)}) should be resumable"
            return
        assert expected_ok, f"run {run_id} ({self.model_runs.get(run_id)}) resumed"
        assert point.step == self._next_step(run_id)
        event(f"resumed a {self.model_runs[run_id]} run")
        self.run = run
        self.model_runs[run_id] = "running"
        steps = self.model_steps[run_id]
        self.model_steps[run_id] = ["pending" if s in ("running", "failed") else s for s in steps]

    @precondition(lambda self: self.run is not None)
    @rule(host=st.sampled_from(HOSTS), to_state=st.sampled_from(HOST_STATES))
    def transition(self, host: str, to_state: str) -> None:
        assert self.run is not None
        current = self.model_hosts[self.run.id].get(host, "idle")
        expected_ok = is_allowed(current, to_state)
        try:
            self.run.host_transition(host, to_state)
        except JournalError:
            assert not expected_ok, f"{current} -> {to_state} refused"
            return
        assert expected_ok, f"illegal {current} -> {to_state} accepted"
        self.model_hosts[self.run.id][host] = to_state

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def journal_is_consistent(self) -> None:
        records = {r.id: r for r in self.reader.runs(limit=None, with_steps=True)}
        assert set(records) == set(self.model_runs)
        for run_id, record in records.items():
            states = [s.state for s in record.steps]
            assert states.count("running") <= 1
            # done steps form a prefix; after it at most one running/failed step, then pending
            done = 0
            while done < len(states) and states[done] in ("completed", "skipped"):
                done += 1
            rest = states[done:]
            if rest and rest[0] in ("running", "failed"):
                rest = rest[1:]
            assert all(s == "pending" for s in rest), states
            if record.state == "completed":
                assert all(s in ("completed", "skipped") for s in states)
            assert record.state == self.model_runs[run_id], (run_id, record.state, self.model_runs[run_id])
            assert states == self.model_steps[run_id]
            assert self.reader.host_states(run_id) == self.model_hosts[run_id]
            if record.state in ("failed", "interrupted") and self.run is None:
                point = self.reader.resume_point(run_id, steps=STEPS)
                assert point.step == self._next_step(run_id)


JournalMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJournalProperties = JournalMachine.TestCase
