"""A locked, journalled run: the environment lock, a journal run and its audit record, together.
Every command that changes an environment runs inside `locked_run`, given the environment's
coordination (orchestrator.runs.backend.coordination_for: local files, or shared in S3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.runs.backend import Coordination, LocalCoordination, Lock
from orchestrator.runs.journal import Journal, Run, TransitionRule
from orchestrator.runs.lock import EnvironmentLocked, Takeover, WaitCallback
from orchestrator.runs.records import ResumePoint, RunRecord


@dataclass
class LockedRun:
    """What `locked_run` yields: the run to drive, and the lock and journal behind it."""

    run: Run
    journal: Journal
    lock: Lock
    resume_point: ResumePoint | None = None
    #: the run as it ended, set when the block is left (the journal is closed by then)
    final: RunRecord | None = None

    @property
    def takeover(self) -> Takeover | None:
        """The stale holder this run's lock replaced, if any."""
        return self.lock.takeover


@contextlib.contextmanager
def locked_run(
    where: Coordination | Path,
    *,
    command: str,
    argv: Sequence[str] = (),
    steps: Sequence[str] = (),
    resume: str | None = None,
    release: str | None = None,
    plan_sha256: str | None = None,
    wait: float | None = None,
    on_wait: WaitCallback | None = None,
    env: str | None = None,
    transitions: TransitionRule | None = None,
    lock_command: str | None = None,
) -> Iterator[LockedRun]:
    """Take the environment lock, start (or, with `resume=RUN_ID`, resume) a journalled run, and
    on the way out finish the run, write its audit record and release the lock.

    `where` is the environment's coordination (a state dir: its local files).

        with locked_run(coordination_for(loaded), command="up", argv=argv, steps=STAGE_NAMES, wait=lock_wait,
                        on_wait=app.info) as session:
            session.run.execute([(name, function) for name, function in STAGES])

    Leaving the block normally completes the run (refused while a step is not done); an
    exception fails it with the exception's exit status (HealthGateFailed -> 3), KeyboardInterrupt
    marks it interrupted. The lock is checked before every step (LockLost stops the run). Raises
    EnvironmentLocked (exit 75) when the lock stays busy, after recording the refusal in the audit
    log, and NotResumable when `resume` names a run that cannot continue.
    """
    coordination = where if not isinstance(where, Path) else LocalCoordination(where, env or where.name)
    described = lock_command or " ".join(["orchestrate", *(argv or [command])])
    lock = coordination.lock(command=described, on_wait=on_wait)
    audit = coordination.audit()
    try:
        try:
            lock.acquire(wait)
        except EnvironmentLocked as exc:
            audit.record(command=command, outcome="lock_busy",
                         details={"argv": list(argv), "holder": exc.holder.as_dict() if exc.holder else None})
            raise
        try:
            with coordination.journal(transitions=transitions, writer=True,
                                      run_ids=[resume] if resume else ()) as journal:
                point: ResumePoint | None = None
                if resume is not None:
                    run, point = journal.resume(resume, steps=steps or None, plan_sha256=plan_sha256)
                else:
                    run = journal.start_run(command, argv, release=release, plan_sha256=plan_sha256, steps=steps)
                lock.set_run_id(run.id)
                run.guard = lock.check
                session = LockedRun(run=run, journal=journal, lock=lock, resume_point=point)
                try:
                    with run:
                        yield session
                finally:
                    details: dict[str, Any] = {}
                    if lock.takeover is not None:
                        details["lock_takeover"] = lock.takeover.describe()
                    if point is not None:
                        details["resumed_at"] = point.step
                    session.final = run.record()
                    audit.record_run(session.final, details=details)
        finally:
            lock.release()
    finally:
        audit.close()
