"""Where an environment's coordination lives: its lock, its run journal and its audit log.

Two implementations behind one small interface (`Coordination`):

- `LocalCoordination`: files in `.orchestrate/ENV/` (lock + lock.json, journal.db, audit.db), for
  environments whose Terraform state is on this controller: every operator works here;
- `S3Coordination`: objects beside the Terraform state in its S3 bucket, for environments whose
  state is remote, so that operators on several controllers serialise on one lock and see one
  history:

      s3://BUCKET/<state key>.orchestrate/
        lock.json                     the environment lock (orchestrator.runs.s3lock)
        runs/<run id>.json            one object per run: steps, host transitions (runs.s3journal)
        audit/<seq>.json, audit/HEAD  the hash-chained audit log (runs.s3audit)

`coordination_for(loaded)` picks one from the environment file: `terraform.backend.type: s3`
means shared. Everything that takes the lock, writes a run or an audit entry asks it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import S3Backend
from orchestrator.runs.audit import AUDIT_FILE, AuditEntry, AuditLog
from orchestrator.runs.journal import JOURNAL_FILE, Journal, TransitionRule
from orchestrator.runs.lock import EnvironmentLock, Holder, Takeover, WaitCallback
from orchestrator.runs.records import RunRecord
from orchestrator.tools.s3 import ObjectStore

#: what the shared coordination's prefix adds to the Terraform state's key
SHARED_SUFFIX = ".orchestrate/"


class Lock(Protocol):
    """The environment lock, whichever backend holds it."""

    takeover: Takeover | None

    def acquire(self, wait: float | None = None) -> Takeover | None: ...
    def release(self) -> None: ...
    def check(self) -> None: ...
    def set_run_id(self, run_id: str) -> None: ...
    def holder(self) -> Holder | None: ...


class Audit(Protocol):
    """The audit log, whichever backend keeps it."""

    def record(self, *, command: str, outcome: str, run_id: str | None = ..., release: str | None = ...,
               plan_sha256: str | None = ..., duration: float | None = ..., details: Any = ...,
               at: Any = ..., identity: Any = ...) -> AuditEntry: ...
    def record_run(self, run: RunRecord, *, details: Any = ...) -> AuditEntry: ...
    def entries(self, limit: int | None = ..., *, since: Any = ..., command: str | None = ...,
                outcome: str | None = ...) -> list[AuditEntry]: ...
    def verify(self) -> int: ...
    def close(self) -> None: ...


class Coordination(Protocol):
    """An environment's lock, journal and audit log."""

    @property
    def env(self) -> str: ...
    @property
    def state_dir(self) -> Path: ...

    def describe(self) -> str: ...
    def lock(self, *, command: str, on_wait: WaitCallback | None = None) -> Lock: ...
    def audit(self, *, timeout: float | None = None) -> Audit: ...
    def journal(self, *, transitions: TransitionRule | None = None, writer: bool = False, run_ids: Sequence[str] = (),
                recent: int | None = ...) -> contextlib.AbstractContextManager[Journal]: ...
    def has_runs(self) -> bool: ...
    def has_run(self, run_id: str) -> bool: ...
    def has_audit(self) -> bool: ...


@dataclass(frozen=True)
class LocalCoordination:
    """The files of `.orchestrate/ENV/` (the state dir), as every entry point on this controller uses them."""

    state_dir: Path
    env: str

    def describe(self) -> str:
        return f"local files in {self.state_dir}"

    def lock(self, *, command: str, on_wait: WaitCallback | None = None) -> EnvironmentLock:
        return EnvironmentLock(self.state_dir, command=command, env=self.env, on_wait=on_wait)

    def audit(self, *, timeout: float | None = None) -> AuditLog:
        """The audit log (`timeout`: how long a write waits for the database; default AuditLog's)."""
        if timeout is None:
            return AuditLog(self.state_dir, env=self.env)
        return AuditLog(self.state_dir, env=self.env, timeout=timeout)

    @contextlib.contextmanager
    def journal(self, *, transitions: TransitionRule | None = None, writer: bool = False,
                run_ids: Sequence[str] = (), recent: int | None = None) -> Iterator[Journal]:
        """The journal database itself (every run; the same object reads and writes)."""
        journal = Journal.open(self.state_dir, env=self.env, transitions=transitions)
        try:
            yield journal
        finally:
            journal.close()

    def has_runs(self) -> bool:
        return (self.state_dir / JOURNAL_FILE).exists()

    def has_run(self, run_id: str) -> bool:
        if not self.has_runs():
            return False
        with self.journal() as journal:
            return journal.get(run_id) is not None

    def has_audit(self) -> bool:
        return (self.state_dir / AUDIT_FILE).exists()


@dataclass
class S3Coordination:
    """Objects under `prefix` in the Terraform state's bucket (see the module docstring)."""

    store: ObjectStore
    prefix: str
    env: str
    state_dir: Path
    """Where the private copies of the journal are made (removed after use)."""

    @property
    def lock_key(self) -> str:
        return f"{self.prefix}lock.json"

    def describe(self) -> str:
        return f"shared in {self.store.url(self.prefix)}"

    def lock(self, *, command: str, on_wait: WaitCallback | None = None) -> Lock:
        from orchestrator.runs.s3lock import S3EnvironmentLock

        return S3EnvironmentLock(self.store, self.lock_key, command=command, env=self.env, on_wait=on_wait,
                                 audit=self.audit())

    def audit(self, *, timeout: float | None = None) -> Audit:
        from orchestrator.runs.s3audit import S3AuditLog

        return S3AuditLog(self.store, self.prefix, env=self.env)

    @contextlib.contextmanager
    def journal(self, *, transitions: TransitionRule | None = None, writer: bool = False,
                run_ids: Sequence[str] = (), recent: int | None = None) -> Iterator[Journal]:
        """A private copy of the newest runs (and `run_ids`); a `writer` (the lock holder) sends
        every change back. Runs the lock does not name are not alive."""
        from orchestrator.runs.s3journal import RECENT_RUNS, S3JournalCopy
        from orchestrator.runs.s3lock import lock_names_run

        copy = S3JournalCopy(self.store, self.prefix, self.state_dir / "shared", env=self.env)
        journal = copy.open(recent=RECENT_RUNS if recent is None else recent, run_ids=run_ids, writer=writer,
                            alive=(lambda run_id: False) if writer else lock_names_run(self.store, self.lock_key),
                            transitions=transitions)
        try:
            yield journal
        finally:
            journal.close()
            copy.remove()

    def has_runs(self) -> bool:
        return next(iter(self.store.keys(f"{self.prefix}runs/")), None) is not None

    def has_run(self, run_id: str) -> bool:
        from orchestrator.runs.s3journal import run_key

        return self.store.exists(run_key(self.prefix, run_id))

    def has_audit(self) -> bool:
        return next(iter(self.store.keys(f"{self.prefix}audit/")), None) is not None


def shared_prefix(backend: S3Backend) -> str:
    """`<state key>.orchestrate/`: beside the Terraform state, one prefix per state."""
    return backend.key + SHARED_SUFFIX


def coordination_for(loaded: LoadedEnvironment) -> Coordination:
    """The environment's coordination: shared in S3 when its Terraform state is, else local files."""
    backend = loaded.env.terraform.backend
    if isinstance(backend, S3Backend):
        return S3Coordination(ObjectStore(backend.bucket, backend.region), shared_prefix(backend),
                              env=loaded.name, state_dir=loaded.state_dir)
    return LocalCoordination(loaded.state_dir, loaded.name)
