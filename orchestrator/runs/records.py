"""Rows of the run journal as typed records: runs, steps, host transitions, resume points."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.runs.identity import ProcessIdentity, parse_time

RUN_STATES = ("running", "completed", "failed", "interrupted")


STEP_STATES = ("pending", "running", "completed", "failed", "skipped")


#: step states after which the next step may start
_STEP_DONE = ("completed", "skipped")


#: where every host starts in a run (orchestrator.models.process.INITIAL_STATE)
INITIAL_HOST_STATE = "idle"


@dataclass(frozen=True)
class StepRecord:
    """One step of a run as stored."""

    run_id: str
    seq: int
    name: str
    state: str
    started: str | None
    finished: str | None
    duration: float | None
    detail: dict[str, Any]
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "name": self.name,
            "state": self.state,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "attempts": self.attempts,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class HostTransition:
    """One recorded change of a host's deployment state within a run."""

    run_id: str
    host: str
    from_state: str
    to_state: str
    at: str
    release: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    """Its row id: transitions are numbered in the order recorded, across runs."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "from": self.from_state,
            "to": self.to_state,
            "at": self.at,
            "release": self.release,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class RunRecord:
    """A run as stored, with its effective state.

    `state` is what readers should show: a run stored as `running` whose process is gone from this
    host is `interrupted`. `stored_state` is the raw column.
    """

    id: str
    env: str
    command: str
    argv: list[str]
    state: str
    stored_state: str
    started: str
    finished: str | None
    release: str | None
    plan_sha256: str | None
    owner: ProcessIdentity
    exit_code: int | None
    error: str | None
    fixed_steps: bool
    attempts: int
    steps: tuple[StepRecord, ...] = ()

    @property
    def user(self) -> str:
        return self.owner.user

    @property
    def host(self) -> str:
        return self.owner.host

    @property
    def pid(self) -> int:
        return self.owner.pid

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (None while unfinished)."""
        if self.finished is None:
            return None
        return (parse_time(self.finished) - parse_time(self.started)).total_seconds()

    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def to_summary(self) -> dict[str, Any]:
        """The `orchestrate runs --json` element (contract keys first; more may follow)."""
        return {
            "id": self.id,
            "command": self.command,
            "state": self.state,
            "started": self.started,
            "finished": self.finished,
            "release": self.release,
            "plan_sha256": self.plan_sha256,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "error": self.error,
            "attempts": self.attempts,
        }

    def as_dict(self) -> dict[str, Any]:
        """Everything, steps included."""
        data = self.to_summary()
        data["argv"] = self.argv
        data["env"] = self.env
        data["steps"] = [s.as_dict() for s in self.steps]
        return data


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumable run continues: `step` is the first step not completed (None: none left)."""

    run: RunRecord
    step: str | None
    seq: int | None
    done: tuple[str, ...]


def _effective_state(stored: str, owner: ProcessIdentity) -> str:
    if stored == "running" and owner.alive() is False:
        return "interrupted"
    return stored


def _load_json(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _step_from_row(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"],
        seq=row["seq"],
        name=row["name"],
        state=row["state"],
        started=row["started"],
        finished=row["finished"],
        duration=row["duration"],
        detail=_load_json(row["detail"]),
        attempts=row["attempts"],
    )


def _run_from_row(row: sqlite3.Row, steps: Sequence[StepRecord] = ()) -> RunRecord:
    owner = ProcessIdentity(user=row["user"], host=row["host"], pid=row["pid"], pid_start=row["pid_start"])
    return RunRecord(
        id=row["id"],
        env=row["env"],
        command=row["command"],
        argv=json.loads(row["argv"]),
        state=_effective_state(row["state"], owner),
        stored_state=row["state"],
        started=row["started"],
        finished=row["finished"],
        release=row["release"],
        plan_sha256=row["plan_sha256"],
        owner=owner,
        exit_code=row["exit_code"],
        error=row["error"],
        fixed_steps=bool(row["fixed_steps"]),
        attempts=row["attempts"],
        steps=tuple(steps),
    )
