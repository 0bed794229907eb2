"""The crash-safe run journal of an environment: runs, their steps and per-host transitions.

One SQLite database per environment at `.orchestrate/<env>/journal.db`, in WAL mode with
`synchronous=FULL`: every state change is its own committed (and fsync'ed) transaction, written
*before* a step starts and *after* it ends. A process killed at any point (SIGKILL, reboot) leaves
the journal readable and consistent: the run it was executing is still marked `running`, and since
its pid is gone from this host, readers report it as `interrupted`; `resume_point()` names the first
step that did not complete.

Invariants the API enforces (and the property tests check):

- a run has at most one `running` step; steps run in their declared order;
- a run can be marked `completed` only when every step is `completed` or `skipped`;
- a completed run is final; failed and interrupted runs can be resumed (the same run id continues);
- per-host transitions are checked by a pluggable validator (by default the deployment state
  machine of orchestrator.models.process) and illegal ones are refused.

Usage (orchestrator.runs.session.locked_run wraps the lock, this and the audit record around it):

    journal = Journal.open(loaded.state_dir)              # transitions=models.process.is_allowed
    run = journal.start_run("up", ["up", "dev"], steps=["render", "provision", "deploy"])
    with run.step("render") as step:                      # `running` committed before the body
        step.detail["files"] = 12                         # `completed` + detail committed after
    run.host_transition("app-1", "backed_up", release=rid)  # refused unless the machine allows it
    run.complete()                                        # refused while a step is not done
    # after a crash, in a new process:
    run, point = journal.resume(run_id, steps=[...])      # NotResumable says why not
    run.execute([(name, function), ...])                  # runs the steps not done yet

Concurrency: every write is a `BEGIN IMMEDIATE` transaction (SQLite's busy handler waits up to
`timeout` seconds for another writer); one connection per Journal object, guarded by a lock so the
object can be shared between threads. Mutual exclusion of whole runs is the job of
orchestrator.runs.lock; the journal only refuses to start a second run while one is visibly alive.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import ExitStatus, OrchestratorError
from orchestrator.runs.db import _SCHEMA, AfterCommit, StateDatabaseError, _Database
from orchestrator.runs.identity import ProcessIdentity, isoformat, new_run_id, utcnow
from orchestrator.runs.records import (
    _STEP_DONE,
    INITIAL_HOST_STATE,
    HostTransition,
    ResumePoint,
    RunRecord,
    StepRecord,
    _dump_json,
    _load_json,
    _run_from_row,
    _step_from_row,
)

JOURNAL_FILE = "journal.db"


StageFunction = Callable[["StepHandle"], object]


"""A stage of a pipeline as Run.execute runs it: receives the step's handle."""


TransitionRule = Callable[[str, str], bool] | Collection[tuple[str, str]]


"""Either a predicate `(from_state, to_state) -> allowed` or the set of allowed pairs."""


class JournalError(OrchestratorError):
    """The journal refused an operation (illegal transition, unknown run, broken invariant)."""


class ResumeRefusal(StrEnum):
    """Why a run cannot be resumed."""

    UNKNOWN = "unknown"
    COMPLETED = "completed"
    RUNNING = "running"
    ACTIVE_RUN = "active_run"
    STEPS_CHANGED = "steps_changed"
    PLAN_CHANGED = "plan_changed"


class NotResumable(JournalError):
    """A run cannot be resumed; `reason` says why (exit 2, or 75 when another run is active)."""

    def __init__(self, message: str, *, reason: ResumeRefusal, run_id: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.run_id = run_id
        busy = reason in (ResumeRefusal.RUNNING, ResumeRefusal.ACTIVE_RUN)
        self.exit_status = ExitStatus.LOCK_BUSY if busy else ExitStatus.BAD_INPUT


def _as_predicate(rule: TransitionRule | None) -> Callable[[str, str], bool]:
    if rule is None:
        # imported here so that the journal stays usable (with an explicit rule) even while the
        # models package is being changed
        from orchestrator.models.process import is_allowed

        return is_allowed
    if callable(rule):
        return rule
    pairs = frozenset(rule)
    return lambda a, b: (a, b) in pairs


def _transition(row: sqlite3.Row) -> HostTransition:
    return HostTransition(row["run_id"], row["host"], row["from_state"], row["to_state"], row["at"], row["release"],
                          _load_json(row["detail"]), id=row["id"])


class Journal:
    """The run journal of one environment. Open it with `Journal.open(state_dir)`."""

    def __init__(
        self,
        path: Path,
        *,
        env: str,
        transitions: TransitionRule | None = None,
        initial_host_state: str = INITIAL_HOST_STATE,
        identity: ProcessIdentity | None = None,
        timeout: float = 30.0,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self.path = path
        self.env = env
        self.initial_host_state = initial_host_state
        self.identity = identity or ProcessIdentity.current()
        self._allowed = _as_predicate(transitions)
        # after_commit: a copy of the journal elsewhere follows every write (runs.s3journal)
        self._db = _Database(path, _SCHEMA, timeout=timeout, after_commit=after_commit)

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        env: str | None = None,
        transitions: TransitionRule | None = None,
        initial_host_state: str = INITIAL_HOST_STATE,
        timeout: float = 30.0,
    ) -> Journal:
        """Open (creating) `state_dir/journal.db`; `env` defaults to the directory's name.

        `transitions` is the per-host state machine (predicate or allowed pairs); the default is
        orchestrator.models.process.is_allowed (idle -> backed_up -> staged -> switched -> verified,
        failed and rolled_back on the way out).
        """
        return cls(
            Path(state_dir) / JOURNAL_FILE,
            env=env or Path(state_dir).name,
            transitions=transitions,
            initial_host_state=initial_host_state,
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection (the Journal object is unusable afterwards)."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transitions ---------------------------------------------------------------------

    def transition_allowed(self, from_state: str, to_state: str) -> bool:
        """Whether the host state machine allows `from_state -> to_state`."""
        return bool(self._allowed(from_state, to_state))

    # -- starting and resuming -------------------------------------------------------------

    def start_run(
        self,
        command: str,
        argv: Sequence[str] = (),
        *,
        release: str | None = None,
        plan_sha256: str | None = None,
        steps: Sequence[str] = (),
        run_id: str | None = None,
    ) -> Run:
        """Record a new `running` run owned by this process and return its handle.

        With `steps`, the run's steps are fixed (all `pending`; other names are refused and resume
        compares them); without, steps are appended as they start. Refuses while another run of
        this environment is alive on this host (the environment lock should have prevented it).
        """
        if len(set(steps)) != len(steps):
            raise JournalError(f"duplicate step names in {list(steps)}")
        now = isoformat(utcnow())
        me = self.identity
        with self._db.write() as conn:
            self._reap(conn)
            active = self._active_runs(conn)
            if active:
                other = active[0]
                raise JournalError(
                    f"run {other.id} ({other.command}) of environment {self.env} is still running "
                    f"({other.owner.describe()})",
                    hint="wait for it, or take the environment lock first",
                )
            for attempt in range(20):
                rid = run_id or new_run_id()
                try:
                    conn.execute(
                        "INSERT INTO runs (id, env, command, argv, state, started, release, plan_sha256,"
                        " user, host, pid, pid_start, fixed_steps) VALUES (?,?,?,?,'running',?,?,?,?,?,?,?,?)",
                        (rid, self.env, command, json.dumps(list(argv)), now, release, plan_sha256,
                         me.user, me.host, me.pid, me.pid_start, 1 if steps else 0),
                    )
                    break
                except sqlite3.IntegrityError:
                    if run_id is not None or attempt == 19:
                        raise JournalError(f"run id {rid} already exists") from None
            conn.executemany(
                "INSERT INTO steps (run_id, seq, name, state) VALUES (?,?,?,'pending')",
                [(rid, seq, name) for seq, name in enumerate(steps)],
            )
        return Run(self, rid)

    def resume_point(
        self,
        run_id: str,
        *,
        steps: Sequence[str] | None = None,
        plan_sha256: str | None = None,
    ) -> ResumePoint:
        """Where run `run_id` would continue, or NotResumable saying why it cannot.

        Refused when the run is unknown, already completed, still running, when another run of the
        environment is alive, when `steps` (the caller's current step list) differs from the
        recorded one, or when `plan_sha256` differs from the recorded plan hash.
        """
        with self._db.read() as conn:
            return self._resume_point(conn, run_id, steps, plan_sha256)

    def resume(
        self,
        run_id: str,
        *,
        steps: Sequence[str] | None = None,
        plan_sha256: str | None = None,
    ) -> tuple[Run, ResumePoint]:
        """Take over run `run_id` in this process and continue it from its resume point.

        The run becomes `running` again (attempts + 1, owner = this process); steps left
        `running` or `failed` go back to `pending`. Raises NotResumable like resume_point.
        """
        me = self.identity
        with self._db.write() as conn:
            self._reap(conn)
            point = self._resume_point(conn, run_id, steps, plan_sha256)
            conn.execute(
                "UPDATE runs SET state='running', finished=NULL, exit_code=NULL, error=NULL,"
                " user=?, host=?, pid=?, pid_start=?, attempts=attempts+1 WHERE id=?",
                (me.user, me.host, me.pid, me.pid_start, run_id),
            )
            conn.execute(
                "UPDATE steps SET state='pending', finished=NULL, duration=NULL"
                " WHERE run_id=? AND state IN ('running', 'failed')",
                (run_id,),
            )
        return Run(self, run_id), point

    def _resume_point(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        steps: Sequence[str] | None,
        plan_sha256: str | None,
    ) -> ResumePoint:
        run = self._get(conn, run_id)
        if run is None:
            raise NotResumable(
                f"no run {run_id} in the journal of environment {self.env}",
                reason=ResumeRefusal.UNKNOWN,
                run_id=run_id,
                hint=f"see `orchestrate runs {self.env}`",
            )
        if run.state == "completed":
            raise NotResumable(
                f"run {run_id} already completed at {run.finished}: nothing to resume",
                reason=ResumeRefusal.COMPLETED,
                run_id=run_id,
            )
        if run.state == "running":
            where = "" if run.owner.is_local() else " (on another host: its liveness cannot be checked from here)"
            raise NotResumable(
                f"run {run_id} is still running ({run.owner.describe()}){where}",
                reason=ResumeRefusal.RUNNING,
                run_id=run_id,
            )
        others = [r for r in self._active_runs(conn) if r.id != run_id]
        if others:
            raise NotResumable(
                f"run {others[0].id} ({others[0].command}, {others[0].owner.describe()}) is active on "
                f"environment {self.env}",
                reason=ResumeRefusal.ACTIVE_RUN,
                run_id=run_id,
            )
        recorded = run.step_names()
        if steps is not None and run.fixed_steps and list(steps) != recorded:
            raise NotResumable(
                f"the steps of run {run_id} were {recorded}; this version runs {list(steps)}",
                reason=ResumeRefusal.STEPS_CHANGED,
                run_id=run_id,
                hint="start a new run instead",
            )
        if plan_sha256 is not None and run.plan_sha256 is not None and plan_sha256 != run.plan_sha256:
            raise NotResumable(
                f"the plan changed since run {run_id} (recorded sha256 {run.plan_sha256[:12]}, "
                f"now {plan_sha256[:12]})",
                reason=ResumeRefusal.PLAN_CHANGED,
                run_id=run_id,
                hint="start a new run instead",
            )
        done = tuple(s.name for s in run.steps if s.state in _STEP_DONE)
        nxt = next((s for s in run.steps if s.state not in _STEP_DONE), None)
        return ResumePoint(run=run, step=nxt.name if nxt else None, seq=nxt.seq if nxt else None, done=done)

    # -- reading ---------------------------------------------------------------------------

    def runs(self, limit: int | None = 20, *, with_steps: bool = False) -> list[RunRecord]:
        """Runs of this environment, newest first."""
        with self._db.read() as conn:
            sql = "SELECT * FROM runs ORDER BY rowid DESC"
            params: tuple[Any, ...] = ()
            if limit is not None:
                sql += " LIMIT ?"
                params = (limit,)
            rows = conn.execute(sql, params).fetchall()
            if not with_steps:
                return [_run_from_row(r) for r in rows]
            return [_run_from_row(r, self._steps(conn, r["id"])) for r in rows]

    def get(self, run_id: str) -> RunRecord | None:
        """One run with its steps, or None."""
        with self._db.read() as conn:
            return self._get(conn, run_id)

    def host_transitions(self, run_id: str) -> list[HostTransition]:
        """Every host transition of a run, in the order recorded."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM host_transitions WHERE run_id=? ORDER BY id", (run_id,)
            ).fetchall()
        return [_transition(r) for r in rows]

    def latest_moves(self, states: Collection[str]) -> dict[str, HostTransition]:
        """Each host's newest transition into one of `states`, across every run."""
        marks = ",".join("?" * len(states))
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT * FROM host_transitions WHERE id IN (SELECT MAX(id) FROM host_transitions"  # noqa: S608
                f" WHERE to_state IN ({marks}) GROUP BY host)", tuple(states)).fetchall()
        return {r["host"]: _transition(r) for r in rows}

    def host_states(self, run_id: str) -> dict[str, str]:
        """The latest state of every host that has a transition in run `run_id`."""
        states: dict[str, str] = {}
        for t in self.host_transitions(run_id):
            states[t.host] = t.to_state
        return states

    def active_runs(self) -> list[RunRecord]:
        """Runs whose process is alive on this host (or stored running on another host)."""
        with self._db.read() as conn:
            return self._active_runs(conn, include_remote=True)

    def reap(self) -> list[str]:
        """Persist `interrupted` for runs whose process died; return their ids."""
        with self._db.write() as conn:
            return self._reap(conn)

    def _get(self, conn: sqlite3.Connection, run_id: str) -> RunRecord | None:
        row = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return None
        return _run_from_row(row, self._steps(conn, run_id))

    @staticmethod
    def _steps(conn: sqlite3.Connection, run_id: str) -> list[StepRecord]:
        rows = conn.execute("SELECT * FROM steps WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()
        return [_step_from_row(r) for r in rows]

    def _active_runs(self, conn: sqlite3.Connection, *, include_remote: bool = False) -> list[RunRecord]:
        # a run stored as running on another host cannot be checked from here; it does not block
        # new runs (the lease of the environment lock covers other hosts) but is listed as active
        rows = conn.execute("SELECT * FROM runs WHERE state='running' ORDER BY rowid DESC").fetchall()
        active = []
        for row in rows:
            run = _run_from_row(row)
            alive = run.owner.alive()
            if alive or (alive is None and include_remote):
                active.append(run)
        return active

    def _reap(self, conn: sqlite3.Connection) -> list[str]:
        reaped = []
        for row in conn.execute("SELECT * FROM runs WHERE state='running'").fetchall():
            run = _run_from_row(row)
            if run.state == "interrupted":
                conn.execute(
                    "UPDATE runs SET state='interrupted', error=COALESCE(error, ?) WHERE id=? AND state='running'",
                    (f"{run.owner.describe()} ended without finishing the run", run.id),
                )
                reaped.append(run.id)
        return reaped

    # -- writes used by Run ----------------------------------------------------------------

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.write()


class Run:
    """Handle of a run owned by this process: steps, host transitions and the final state.

    As a context manager, a normal exit completes the run, an exception fails it, and
    KeyboardInterrupt/SystemExit marks it interrupted (exceptions propagate).
    """

    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.id = run_id
        #: called before every step starts; e.g. EnvironmentLock.check, so that a holder that lost
        #: its lock (another host took over after its lease lapsed) stops before the next step
        self.guard: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.record().stored_state != "running":
            return
        if exc is None:
            self.complete()
        elif isinstance(exc, Exception):
            status = getattr(exc, "exit_status", ExitStatus.FAILED)
            self.fail(str(exc) or type(exc).__name__, exit_code=int(status))
        else:  # KeyboardInterrupt (orchestrator.errors.Interrupted too), SystemExit
            self.interrupt(str(exc) or type(exc).__name__)

    # -- reading -------------------------------------------------------------------------

    def record(self) -> RunRecord:
        """The run as stored now."""
        found = self.journal.get(self.id)
        if found is None:  # pragma: no cover - rows are never deleted
            raise JournalError(f"run {self.id} vanished from {self.journal.path}")
        return found

    def is_done(self, name: str) -> bool:
        """Whether step `name` is completed or skipped (a resumed run skips those)."""
        return any(s.name == name and s.state in _STEP_DONE for s in self.record().steps)

    def pending_steps(self) -> list[str]:
        """Names of the steps not completed or skipped, in order."""
        return [s.name for s in self.record().steps if s.state not in _STEP_DONE]

    def execute(self, stages: Sequence[tuple[str, StageFunction]], *, complete: bool = True) -> RunRecord:
        """Run each stage whose step is not done yet, in order, each under `step()`; then complete.

        The generic driver for a fresh run and a resumed one alike: a stage receives its
        StepHandle (to record detail) and must be idempotent, because a stage interrupted by a
        crash runs again on resume. Steps marked with `skip()` beforehand are passed over. An
        exception propagates with the step marked failed and the run still running (a `with run:`
        block, or `locked_run`, then fails it).
        """
        for name, function in stages:
            if self.is_done(name):
                continue
            with self.step(name) as handle:
                function(handle)
        return self.complete() if complete else self.record()

    # -- run attributes --------------------------------------------------------------------

    def set_release(self, release: str) -> None:
        """Record the release id once it is known (e.g. after the build step)."""
        with self.journal._write() as conn:
            self._require_running(conn)
            conn.execute("UPDATE runs SET release=? WHERE id=?", (release, self.id))

    def set_plan(self, plan_sha256: str) -> None:
        """Record the sha256 of the terraform plan this run applies."""
        with self.journal._write() as conn:
            self._require_running(conn)
            conn.execute("UPDATE runs SET plan_sha256=? WHERE id=?", (plan_sha256, self.id))

    # -- steps -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str, **detail: Any) -> Iterator[StepHandle]:
        """Run step `name`: `running` is committed before the body, `completed`/`failed` after.

        The body may add to `handle.detail` (saved at the end) or call `handle.update(...)` to
        commit detail mid-step. An exception marks the step failed (its message in
        detail["error"]) and propagates; the run itself stays running for the caller to decide.
        """
        handle = self._begin_step(name, detail)
        try:
            yield handle
        except GeneratorExit:
            # the handle was dropped without leaving the block (never under `with`): say nothing,
            # exactly like a process killed mid-step; the step stays `running` until resumed
            raise
        except BaseException as exc:
            handle.detail["error"] = str(exc) or type(exc).__name__
            self._end_step(handle, "failed")
            raise
        self._end_step(handle, "completed")

    def skip(self, name: str, reason: str, detail: Mapping[str, Any] | None = None) -> None:
        """Mark a pending step `skipped` (e.g. nothing to provision) with the reason, and `detail`
        merged into the step's detail."""
        now = isoformat(utcnow())
        with self.journal._write() as conn:
            self._require_running(conn)
            row = self._step_row(conn, name, create=True)
            self._check_order(conn, row["seq"], name)
            if row["state"] != "pending":
                raise JournalError(
                    f"run {self.id}: step {name!r} is {row['state']}; only a pending step can be skipped"
                )
            merged = _load_json(row["detail"]) | dict(detail or {}) | {"skipped": reason}
            conn.execute(
                "UPDATE steps SET state='skipped', started=?, finished=?, duration=0, detail=?"
                " WHERE run_id=? AND name=?",
                (now, now, _dump_json(merged), self.id, name),
            )

    def _begin_step(self, name: str, detail: Mapping[str, Any]) -> StepHandle:
        if self.guard is not None:
            self.guard()
        started = utcnow()
        with self.journal._write() as conn:
            self._require_running(conn)
            row = self._step_row(conn, name, create=True)
            # a failed step may be retried in place; a completed one never runs twice in a run
            if row["state"] not in ("pending", "failed"):
                raise JournalError(
                    f"run {self.id}: step {name!r} is {row['state']}; only a pending or failed step can start"
                )
            self._check_order(conn, row["seq"], name)
            merged = _load_json(row["detail"]) | dict(detail)
            conn.execute(
                "UPDATE steps SET state='running', started=?, finished=NULL, duration=NULL, detail=?,"
                " attempts=attempts+1 WHERE run_id=? AND name=?",
                (isoformat(started), _dump_json(merged), self.id, name),
            )
        return StepHandle(self, name, row["seq"], started, merged)

    def _end_step(self, handle: StepHandle, state: str) -> None:
        finished = utcnow()
        with self.journal._write() as conn:
            row = self._step_row(conn, handle.name)
            if row["state"] != "running":  # pragma: no cover - only this handle moves it
                raise JournalError(f"run {self.id}: step {handle.name!r} is {row['state']}, not running")
            conn.execute(
                "UPDATE steps SET state=?, finished=?, duration=?, detail=? WHERE run_id=? AND name=?",
                (state, isoformat(finished), (finished - handle.started).total_seconds(),
                 _dump_json(handle.detail), self.id, handle.name),
            )

    def _save_detail(self, handle: StepHandle) -> None:
        with self.journal._write() as conn:
            conn.execute(
                "UPDATE steps SET detail=? WHERE run_id=? AND name=? AND state='running'",
                (_dump_json(handle.detail), self.id, handle.name),
            )

    def _step_row(self, conn: sqlite3.Connection, name: str, *, create: bool = False) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM steps WHERE run_id=? AND name=?", (self.id, name)).fetchone()
        if row is not None:
            return row  # type: ignore[no-any-return]
        fixed = conn.execute("SELECT fixed_steps FROM runs WHERE id=?", (self.id,)).fetchone()[0]
        if not create or fixed:
            names = [r[0] for r in conn.execute("SELECT name FROM steps WHERE run_id=? ORDER BY seq", (self.id,))]
            raise JournalError(f"run {self.id} has no step {name!r} (steps: {', '.join(names) or 'none'})")
        seq = conn.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM steps WHERE run_id=?", (self.id,)).fetchone()[0]
        conn.execute("INSERT INTO steps (run_id, seq, name, state) VALUES (?,?,?,'pending')", (self.id, seq, name))
        return conn.execute(  # type: ignore[no-any-return]
            "SELECT * FROM steps WHERE run_id=? AND name=?", (self.id, name)
        ).fetchone()

    def _check_order(self, conn: sqlite3.Connection, seq: int, name: str) -> None:
        blocking = conn.execute(
            "SELECT name, state FROM steps WHERE run_id=? AND seq<? AND state NOT IN ('completed', 'skipped')"
            " ORDER BY seq LIMIT 1",
            (self.id, seq),
        ).fetchone()
        if blocking is not None:
            raise JournalError(
                f"run {self.id}: step {name!r} cannot start before step {blocking[0]!r} ({blocking[1]}) is done"
            )
        running = conn.execute(
            "SELECT name FROM steps WHERE run_id=? AND state='running'", (self.id,)
        ).fetchone()
        if running is not None:
            raise JournalError(f"run {self.id}: step {running[0]!r} is still running")

    def _require_running(self, conn: sqlite3.Connection) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM runs WHERE id=?", (self.id,)).fetchone()
        if row is None:
            raise JournalError(f"no run {self.id}")
        if row["state"] != "running":
            raise JournalError(f"run {self.id} is {row['state']}, not running")
        me = self.journal.identity
        if (row["host"], row["pid"]) != (me.host, me.pid):
            raise JournalError(f"run {self.id} belongs to {row['user']}@{row['host']} pid {row['pid']}")
        return row  # type: ignore[no-any-return]

    # -- hosts -----------------------------------------------------------------------------

    def host_transition(
        self,
        host: str,
        to_state: str,
        *,
        release: str | None = None,
        expect_from: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> HostTransition:
        """Move `host` to `to_state`, from its latest state in this run (initially `idle`).

        Refuses (JournalError) a transition the state machine does not allow, and, with
        `expect_from`, a host whose recorded state is different (compare-and-set).
        """
        at = isoformat(utcnow())
        with self.journal._write() as conn:
            self._require_running(conn)
            row = conn.execute(
                "SELECT to_state FROM host_transitions WHERE run_id=? AND host=? ORDER BY id DESC LIMIT 1",
                (self.id, host),
            ).fetchone()
            current = row[0] if row else self.journal.initial_host_state
            if expect_from is not None and expect_from != current:
                raise JournalError(f"run {self.id}: host {host} is {current!r}, expected {expect_from!r}")
            if not self.journal.transition_allowed(current, to_state):
                raise JournalError(
                    f"run {self.id}: illegal transition of host {host}: {current} -> {to_state}",
                    hint="the deployment state machine does not allow it",
                )
            cursor = conn.execute(
                "INSERT INTO host_transitions (run_id, host, from_state, to_state, at, release, detail)"
                " VALUES (?,?,?,?,?,?,?)",
                (self.id, host, current, to_state, at, release, _dump_json(dict(detail or {}))),
            )
        return HostTransition(self.id, host, current, to_state, at, release, dict(detail or {}),
                              id=int(cursor.lastrowid or 0))

    def host_states(self) -> dict[str, str]:
        """Latest state of each host touched by this run."""
        return self.journal.host_states(self.id)

    # -- ending ----------------------------------------------------------------------------

    def complete(self, exit_code: int = 0) -> RunRecord:
        """Mark the run completed; refused while a step is not completed or skipped."""
        with self.journal._write() as conn:
            self._require_running(conn)
            left = conn.execute(
                "SELECT name, state FROM steps WHERE run_id=? AND state NOT IN ('completed', 'skipped') ORDER BY seq",
                (self.id,),
            ).fetchall()
            if left:
                listing = ", ".join(f"{r[0]} ({r[1]})" for r in left)
                raise JournalError(f"run {self.id} cannot complete: steps not done: {listing}")
            conn.execute(
                "UPDATE runs SET state='completed', finished=?, exit_code=?, error=NULL WHERE id=?",
                (isoformat(utcnow()), exit_code, self.id),
            )
        return self.record()

    def fail(self, error: str, exit_code: int = int(ExitStatus.FAILED)) -> RunRecord:
        """Mark the run failed with `error` (it can be resumed later)."""
        return self._finish("failed", error, exit_code)

    def interrupt(self, error: str = "interrupted", exit_code: int = int(ExitStatus.INTERRUPTED)) -> RunRecord:
        """Mark the run interrupted (SIGINT/SIGTERM caught): resumable."""
        return self._finish("interrupted", error, exit_code)

    def _finish(self, state: str, error: str, exit_code: int) -> RunRecord:
        with self.journal._write() as conn:
            self._require_running(conn)
            conn.execute(
                "UPDATE runs SET state=?, finished=?, exit_code=?, error=? WHERE id=?",
                (state, isoformat(utcnow()), exit_code, error, self.id),
            )
        return self.record()


class StepHandle:
    """The step being executed: its name, seq, start time and the detail dict saved with it."""

    def __init__(self, run: Run, name: str, seq: int, started: datetime, detail: dict[str, Any]) -> None:
        self.run = run
        self.name = name
        self.seq = seq
        self.started = started
        self.detail = detail

    def update(self, **values: Any) -> None:
        """Add to the detail and commit it now (progress that must survive a crash mid-step)."""
        self.detail.update(values)
        self.run._save_detail(self)


def locate_run(state_root: Path, run_id: str, *, unreadable: list[str] | None = None) -> Path | None:
    """The state dir (`.orchestrate/<env>`) whose journal holds `run_id`, or None.

    For `orchestrate resume RUN_ID`, which is given no environment. A journal that cannot be
    read (damaged, locked too long) is passed over, so that one environment's broken file does
    not stop the others' runs being found; its error is appended to `unreadable`.
    """
    if not state_root.is_dir():
        return None
    for db in sorted(state_root.glob(f"*/{JOURNAL_FILE}")):
        try:
            with Journal.open(db.parent) as journal:
                if journal.get(run_id) is not None:
                    return db.parent
        except StateDatabaseError as exc:
            if unreadable is not None:
                unreadable.append(exc.message)
    return None
