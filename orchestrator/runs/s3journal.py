"""The run journal of an environment whose records live in S3, shared by every controller.

One object per run, `PREFIX/runs/<run id>.json`: the run, its steps and its host transitions,
as the journal's tables hold them. Run ids sort by their start time, so a listing of the keys
is the history in order.

A `Journal` (orchestrator.runs.journal, with all its invariants) works on a private SQLite copy:

- opening it copies the runs it needs from S3 into a fresh database (the newest ones, and any
  run asked for by id);
- a writer (the holder of the environment lock) copies every run a commit changed back to S3,
  each with `If-Match` on the ETag it last saw (`If-None-Match: *` for a new run): a run changed
  by someone else meanwhile (a lock lost to another controller) stops the writer with an error
  instead of overwriting their record;
- a run stored `running` is alive only while the environment lock names it: when the lock is
  free, or held for another run, it is shown (and, by the lock holder, stored) as `interrupted`,
  whichever controller it ran on. That is what lets a run started on one controller be resumed
  from another.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.runs.db import _SCHEMA, _split_sql, connect
from orchestrator.runs.journal import JOURNAL_FILE, Journal, JournalError, TransitionRule
from orchestrator.tools.s3 import ObjectStore, PreconditionFailed

#: how many of the newest runs a journal copy holds (`runs` lists 20, the no-op check of `up`
#: looks at 50)
RECENT_RUNS = 50

#: parallel GETs when a copy is made
FETCH_WORKERS = 8

FORMAT = 1

#: decides whether a run stored `running` may still be alive (the environment lock names it)
Liveness = Callable[[str], bool]


def run_key(prefix: str, run_id: str) -> str:
    return f"{prefix}runs/{run_id}.json"


def export_run(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """The rows of one run (host transitions in their order, without their local row ids)."""
    run = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
    steps = conn.execute("SELECT * FROM steps WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()
    moves = conn.execute("SELECT * FROM host_transitions WHERE run_id=? ORDER BY id", (run_id,)).fetchall()
    return {"format": FORMAT, "run": dict(run),
            "steps": [dict(row) for row in steps],
            "host_transitions": [{k: row[k] for k in row.keys() if k != "id"} for row in moves]}  # noqa: SIM118


def import_run(conn: sqlite3.Connection, record: dict[str, Any]) -> None:
    """Insert one exported run into a journal database.

    Column names come from the object; only the table's own columns are accepted (JournalError
    otherwise), since they are spliced into the statement.
    """
    for table, rows in (("runs", [record["run"]]), ("steps", record["steps"]),
                        ("host_transitions", record["host_transitions"])):
        known = {info[1] for info in conn.execute(f"PRAGMA table_info({table})")}
        for row in rows:
            columns = list(row)
            unknown = sorted(set(columns) - known)
            if unknown:
                raise JournalError(f"a stored run has columns its journal does not know: {table}.{', '.join(unknown)}")
            statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - checked names
            conn.execute(statement, [row[c] for c in columns])


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, indent=1, default=str) + "\n").encode()


class S3JournalCopy:
    """The private copy of the journal a process works on, and its way back to S3."""

    def __init__(self, store: ObjectStore, prefix: str, work_dir: Path, *, env: str) -> None:
        self.store = store
        self.prefix = prefix
        self.env = env
        self.directory = work_dir / f"journal-{secrets.token_hex(4)}"
        self.path = self.directory / JOURNAL_FILE
        self._etags: dict[str, str] = {}
        self._pushed: dict[str, str] = {}

    def run_ids(self) -> list[str]:
        """Every run id in S3, oldest first."""
        start = len(self.prefix) + len("runs/")
        return [key[start:-len(".json")] for key in self.store.keys(f"{self.prefix}runs/") if key.endswith(".json")]

    def exists(self, run_id: str) -> bool:
        return self.store.exists(run_key(self.prefix, run_id))

    def open(self, *, recent: int | None = RECENT_RUNS, run_ids: Sequence[str] = (), writer: bool = False,
             alive: Liveness | None = None, transitions: TransitionRule | None = None) -> Journal:
        """A Journal on a fresh copy holding the `recent` newest runs (all: None) and `run_ids`.

        Runs stored `running` that `alive` does not vouch for become `interrupted` in the copy. A
        `writer` copy sends every change back to S3 (the caller holds the environment lock).
        """
        every = self.run_ids()
        wanted = set(every if recent is None else every[-recent:] if recent else []) | set(run_ids)
        records = self._fetch(sorted(r for r in wanted if r in set(every) or r in run_ids))
        self.directory.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _split_sql(_SCHEMA):
                conn.execute(statement)
            for run_id, record in records:
                self._pushed[run_id] = _digest(record)
                if record["run"]["state"] == "running" and not (alive is not None and alive(run_id)):
                    record["run"].update(state="interrupted", error=record["run"].get("error") or (
                        "its controller ended without finishing the run (the environment lock no longer names it)"))
                import_run(conn, record)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return Journal(self.path, env=self.env, transitions=transitions,
                       after_commit=self._push if writer else None)

    def _fetch(self, run_ids: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        def one(run_id: str) -> tuple[str, dict[str, Any]] | None:
            found = self.store.get(run_key(self.prefix, run_id))
            if found is None:
                return None
            self._etags[run_id] = found.etag
            return run_id, json.loads(found.body)

        with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:
            return [item for item in pool.map(one, run_ids) if item is not None]

    def _push(self, conn: sqlite3.Connection) -> None:
        """After a commit: every run of the copy whose rows changed goes back to S3."""
        for (run_id,) in conn.execute("SELECT id FROM runs ORDER BY rowid").fetchall():
            record = export_run(conn, run_id)
            digest = _digest(record)
            if self._pushed.get(run_id) == digest:
                continue
            key = run_key(self.prefix, run_id)
            etag = self._etags.get(run_id)
            try:
                self._etags[run_id] = (self.store.put(key, _encode(record), if_match=etag) if etag
                                       else self.store.put(key, _encode(record), if_none_match=True))
            except PreconditionFailed:
                # a retried request of ours that had succeeded looks the same: compare
                found = self.store.get(key)
                if found is None or _digest(json.loads(found.body)) != digest:
                    raise JournalError(
                        f"run {run_id} was changed in {self.store.url(key)} by another controller while this one "
                        "wrote it; the environment lock was lost", hint=f"see `orchestrate runs {self.env} {run_id}`",
                    ) from None
                self._etags[run_id] = found.etag
            self._pushed[run_id] = digest

    def remove(self) -> None:
        """Delete the private copy (S3 keeps everything)."""
        shutil.rmtree(self.directory, ignore_errors=True)
