"""SQLite access shared by the journal and the audit log: WAL mode, FULL sync, immediate write
transactions, and the journal's schema.

Every SQLite error leaves this module as a StateDatabaseError naming the file and SQLite's own
error name (`SQLITE_FULL`, `SQLITE_NOTADB`, ...): what an operator sees is which file, what is
wrong with it and what to do, never a bare `sqlite3.OperationalError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.errors import OrchestratorError

#: what to do about an error, by SQLite's error name (the rest: the message alone)
_HINTS = {
    "SQLITE_FULL": "the disk holding it is full: free space there and run the command again",
    "SQLITE_NOTADB": "the file is damaged or not a database: move it aside (nothing else uses it; "
                     "other environments are not affected) and keep it for inspection",
    "SQLITE_CORRUPT": "the file is damaged: move it aside (other environments are not affected) and "
                      "keep it for inspection",
    "SQLITE_BUSY": "another process held it longer than the busy timeout; run the command again",
    "SQLITE_LOCKED": "another connection held it longer than the busy timeout; run the command again",
    "SQLITE_READONLY": "the file or its directory is not writable by this user",
    "SQLITE_CANTOPEN": "the file or its directory cannot be opened: check that it exists and its permissions",
    "SQLITE_IOERR": "the disk reported an I/O error",
}


class StateDatabaseError(OrchestratorError):
    """An SQLite state file (journal.db, audit.db) could not be read or written (exit 1).

    The message names the file and SQLite's error; `code` is SQLite's error name (e.g. SQLITE_FULL).
    """

    def __init__(self, path: Path, exc: sqlite3.Error, doing: str) -> None:
        self.path = path
        self.code = _error_name(exc)
        super().__init__(f"{path}: cannot {doing}: {exc} ({self.code})",
                         hint=_HINTS.get(self.code) or _HINTS.get(_primary(self.code)))


def _error_name(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str) and name:
        return name
    # errors raised by the sqlite3 module itself (e.g. on a closed connection) carry no code
    return "SQLITE_ERROR"


def _primary(code: str) -> str:
    """`SQLITE_IOERR_WRITE` -> `SQLITE_IOERR` (extended codes share their primary code's hint)."""
    parts = code.split("_")
    return "_".join(parts[:2])


def connect(path: Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open (creating) an SQLite database in WAL mode with fsync on every commit.

    Autocommit mode (isolation_level=None): callers open `BEGIN IMMEDIATE` themselves so that a
    read-check-write sequence is one atomic transaction across processes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    # WAL: readers (orchestrate runs, the heal server) never block the writer and vice versa.
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the WAL is fsync'ed at each commit, so a committed step survives power loss too.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


#: called with the connection after every committed write transaction (still under the
#: database's thread lock): e.g. to copy what changed to shared storage
AfterCommit = Callable[[sqlite3.Connection], None]


class _Database:
    """One connection, a thread lock, and transactions that commit or roll back.

    SQLite errors, whether from opening the file, the transaction's own statements or the
    caller's inside it, are raised as StateDatabaseError naming the file.
    """

    def __init__(self, path: Path, schema: str, *, timeout: float, after_commit: AfterCommit | None = None) -> None:
        self.path = path
        self._mutex = threading.RLock()
        try:
            self._conn = connect(path, timeout=timeout)
        except sqlite3.Error as exc:
            raise StateDatabaseError(path, exc, "open it") from exc
        self._after_commit: AfterCommit | None = None
        try:
            with self.write() as conn:
                # executescript() would COMMIT the open transaction: run the statements one by one
                for statement in _split_sql(schema):
                    conn.execute(statement)
        except StateDatabaseError:
            self._conn.close()
            raise
        self._after_commit = after_commit

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: takes the write lock up front, so checks and writes are atomic."""
        with self._mutex:
            self._begin("BEGIN IMMEDIATE", "start a write")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StateDatabaseError(self.path, exc, "write to it") from exc
                raise
            if self._after_commit is not None:
                self._after_commit(self._conn)

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self._mutex:
            self._begin("BEGIN", "read it")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StateDatabaseError(self.path, exc, "read it") from exc
                raise

    def _begin(self, statement: str, doing: str) -> None:
        try:
            self._conn.execute(statement)
        except sqlite3.Error as exc:
            raise StateDatabaseError(self.path, exc, doing) from exc

    def _rollback(self) -> None:
        """End a failed transaction without hiding why it failed.

        SQLite may have rolled the transaction back by itself (SQLITE_FULL, SQLITE_IOERR, ...);
        a ROLLBACK then fails with "cannot rollback - no transaction is active", which must not
        replace the error that caused it.
        """
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    """Statements of a schema script (no semicolons inside literals; triggers keep their body)."""
    statements: list[str] = []
    current: list[str] = []
    depth = 0
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        upper = stripped.upper()
        if upper.startswith("CREATE TRIGGER"):
            depth += 1
        if upper.startswith("END;"):
            depth -= 1
        if stripped.endswith(";") and depth == 0:
            statements.append("\n".join(current))
            current = []
    if current:
        statements.append("\n".join(current))
    return statements


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    command TEXT NOT NULL,
    argv TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'completed', 'failed', 'interrupted')),
    started TEXT NOT NULL,
    finished TEXT,
    release TEXT,
    plan_sha256 TEXT,
    user TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    exit_code INTEGER,
    error TEXT,
    fixed_steps INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'failed', 'skipped')),
    started TEXT,
    finished TEXT,
    duration REAL,
    detail TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, name)
);
CREATE TABLE IF NOT EXISTS host_transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id),
    host TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    at TEXT NOT NULL,
    release TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS host_transitions_run_host ON host_transitions (run_id, host, id);
"""
