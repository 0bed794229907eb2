"""Append-only audit log of an environment: who did what, when, with which outcome.

Stored as an SQLite table in `.orchestrate/<env>/audit.db` (WAL, fsync on commit) rather than a
JSON-lines file, because:

- several writers append at once (operators, cron, the heal server): SQLite serialises them with
  its write lock, where concurrent appends to a file can interleave or leave a torn last line after
  a crash that every reader then has to tolerate;
- readers ask for "the last N" and "since T": an index answers without reading the whole history;
- append-only is enforced by the database itself: triggers abort any UPDATE or DELETE, whatever
  code issues it, and this module has no such path;
- each entry carries the sha256 of its content chained to the previous entry's hash, so an edit
  made outside SQLite's rules (editing the file, dropping the triggers) is found by `verify()`;
- the chain's head (the id and hash of the newest entry) is also kept outside the database, in
  `audit.head` beside it, replaced atomically after every append: a chain cut off at its end is
  intact in itself, and only the head can tell that entries are missing.

It is a separate file from the run journal so that clearing a journal never touches the audit
trail, and so that the heal server's frequent decisions never contend with a run's step writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.files import atomic_write, file_lock
from orchestrator.runs.db import _Database
from orchestrator.runs.identity import ProcessIdentity, isoformat, parse_time, utcnow
from orchestrator.runs.records import RunRecord

AUDIT_FILE = "audit.db"
#: the newest entry's id and hash, outside the database (see the module docstring)
AUDIT_HEAD_FILE = "audit.head"
_HEAD_LOCK = ".audit.head.lock"
_GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    env TEXT NOT NULL,
    user TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    command TEXT NOT NULL,
    outcome TEXT NOT NULL,
    run_id TEXT,
    release TEXT,
    plan_sha256 TEXT,
    duration REAL,
    details TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
"""

_HASHED = ("at", "env", "user", "host", "pid", "command", "outcome", "run_id", "release", "plan_sha256",
           "duration", "details")
_INSERT = (
    "INSERT INTO audit (at, env, user, host, pid, command, outcome, run_id, release, plan_sha256, duration,"
    " details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class AuditError(OrchestratorError):
    """The audit log could not be written, or verification found a tampered entry."""


@dataclass(frozen=True)
class AuditEntry:
    """One audit record."""

    id: int
    at: str
    env: str
    user: str
    host: str
    pid: int
    command: str
    outcome: str
    run_id: str | None = None
    release: str | None = None
    plan_sha256: str | None = None
    duration: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "command": self.command,
            "env": self.env,
            "outcome": self.outcome,
            "run_id": self.run_id,
            "release": self.release,
            "plan_sha256": self.plan_sha256,
            "duration": self.duration,
            "details": self.details,
        }


@dataclass(frozen=True)
class AuditHead:
    """What `audit.head` records: the id and hash of the newest entry appended."""

    id: int
    hash: str


def read_head(state_dir: Path) -> AuditHead | None:
    """The head recorded beside the audit log of `state_dir`; None when there is none yet.

    AuditError when the file exists but is not a head (damaged or edited).
    """
    path = Path(state_dir) / AUDIT_HEAD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return AuditHead(id=int(data["id"]), hash=str(data["hash"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path}: unreadable audit head ({exc}); the audit log cannot be verified") from None


def _advance_head(state_dir: Path, head: AuditHead) -> None:
    """Record `head` unless a newer one already is (appends of several processes finish in any order).

    Written after the entry's commit: a crash in between leaves the head one entry behind, which
    `verify` accepts (the entries after it chain from its hash), never ahead of the log.
    """
    with file_lock(Path(state_dir) / _HEAD_LOCK):
        current = read_head(state_dir)
        if current is not None and current.id >= head.id:
            return
        atomic_write(Path(state_dir) / AUDIT_HEAD_FILE, json.dumps({"id": head.id, "hash": head.hash}) + "\n",
                     mode=0o600, durable=True)


def verify_state_dir(state_dir: Path, *, env: str | None = None) -> int:
    """`AuditLog.verify` of `state_dir`'s log; a log that is missing while its head exists is tampered."""
    if not (Path(state_dir) / AUDIT_FILE).exists():
        head = read_head(state_dir)
        if head is not None:
            raise AuditError(f"{Path(state_dir) / AUDIT_FILE} is missing, but {AUDIT_HEAD_FILE} records "
                             f"{head.id} entries: the audit log was removed outside orchestrate")
        return 0
    with AuditLog(state_dir, env=env) as log:
        return log.verify()


def _digest(prev_hash: str, values: Mapping[str, Any]) -> str:
    payload = json.dumps([values[k] for k in _HASHED], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode()).hexdigest()


class AuditLog:
    """The audit log of one environment: `record()` appends, `entries()` reads newest first."""

    def __init__(
        self,
        state_dir: Path,
        *,
        env: str | None = None,
        identity: ProcessIdentity | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / AUDIT_FILE
        self.env = env or self.state_dir.name
        self.identity = identity or ProcessIdentity.current()
        self._db = _Database(self.path, _SCHEMA, timeout=timeout)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(
        self,
        *,
        command: str,
        outcome: str,
        run_id: str | None = None,
        release: str | None = None,
        plan_sha256: str | None = None,
        duration: float | None = None,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
        identity: ProcessIdentity | None = None,
    ) -> AuditEntry:
        """Append one entry (committed and fsync'ed before this returns) and return it.

        `command` says what was done ("up", "rollback", "heal restart", "lock takeover"), `outcome`
        how it ended ("completed", "failed", "rolled_back", "interrupted", "decided", ...).
        """
        if not command or not outcome:
            raise AuditError("an audit entry needs a command and an outcome")
        who = identity or self.identity
        values: dict[str, Any] = {
            "at": isoformat(at or utcnow()),
            "env": self.env,
            "user": who.user,
            "host": who.host,
            "pid": who.pid,
            "command": command,
            "outcome": outcome,
            "run_id": run_id,
            "release": release,
            "plan_sha256": plan_sha256,
            "duration": duration,
            "details": json.dumps(dict(details or {}), sort_keys=True, default=str),
        }
        with self._db.write() as conn:
            row = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev = row[0] if row else _GENESIS
            digest = _digest(prev, values)
            cursor = conn.execute(
                _INSERT, (*[values[k] for k in _HASHED], prev, digest),
            )
            entry_id = int(cursor.lastrowid or 0)
        _advance_head(self.state_dir, AuditHead(entry_id, digest))
        return AuditEntry(
            id=entry_id,
            at=values["at"],
            env=self.env,
            user=who.user,
            host=who.host,
            pid=who.pid,
            command=command,
            outcome=outcome,
            run_id=run_id,
            release=release,
            plan_sha256=plan_sha256,
            duration=duration,
            details=json.loads(values["details"]),
            hash=digest,
        )

    def record_run(self, run: RunRecord, *, details: Mapping[str, Any] | None = None) -> AuditEntry:
        """Append the entry for a finished run: its command, owner, release, plan, outcome, duration."""
        extra: dict[str, Any] = {"argv": run.argv, "exit_code": run.exit_code, "attempts": run.attempts}
        if run.error:
            extra["error"] = run.error
        extra.update(details or {})
        return self.record(
            command=run.command,
            outcome=run.state,
            run_id=run.id,
            release=run.release,
            plan_sha256=run.plan_sha256,
            duration=run.duration,
            details=extra,
            identity=run.owner,
        )

    def entries(
        self,
        limit: int | None = 50,
        *,
        since: datetime | str | None = None,
        command: str | None = None,
        outcome: str | None = None,
    ) -> list[AuditEntry]:
        """Entries newest first, optionally only those at or after `since` / of one command/outcome."""
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            moment = parse_time(since) if isinstance(since, str) else since
            where.append("at >= ?")
            params.append(isoformat(moment))
        if command is not None:
            where.append("command = ?")
            params.append(command)
        if outcome is not None:
            where.append("outcome = ?")
            params.append(outcome)
        sql = "SELECT * FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._db.read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            AuditEntry(
                id=r["id"], at=r["at"], env=r["env"], user=r["user"], host=r["host"], pid=r["pid"],
                command=r["command"], outcome=r["outcome"], run_id=r["run_id"], release=r["release"],
                plan_sha256=r["plan_sha256"], duration=r["duration"], details=json.loads(r["details"]),
                hash=r["hash"],
            )
            for r in rows
        ]

    def verify(self) -> int:
        """Check the hash chain from the first entry, and its end against `audit.head`; return how
        many entries are intact.

        Raises AuditError naming the first entry whose content or link does not match, or saying
        that entries recorded by the head are missing (the newest ones were cut off).
        """
        head = read_head(self.state_dir)
        prev = _GENESIS
        count = 0
        head_hash: str | None = None
        with self._db.read() as conn:
            for row in conn.execute("SELECT * FROM audit ORDER BY id"):
                values = {k: row[k] for k in _HASHED}
                if row["prev_hash"] != prev or _digest(prev, values) != row["hash"]:
                    raise AuditError(
                        f"{self.path}: audit entry {row['id']} ({row['at']}, {row['command']}) does not match "
                        "its recorded hash: the log was modified outside orchestrate"
                    )
                if head is not None and row["id"] == head.id:
                    head_hash = row["hash"]
                prev = row["hash"]
                count += 1
        if head is not None and head_hash != head.hash:
            what = "is missing" if head_hash is None else "does not have the hash recorded there"
            raise AuditError(
                f"{self.path}: entry {head.id}, the newest one according to {AUDIT_HEAD_FILE}, {what} "
                f"(the log holds {count} entries): entries were removed or replaced outside orchestrate"
            )
        return count
