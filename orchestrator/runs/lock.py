"""The environment lock: one holder at a time per environment, across every entry point.

`orchestrate up` from a terminal, the same from cron and the heal server all take this lock before
touching an environment. Two parts:

- `.orchestrate/<env>/lock`: an `fcntl.flock` on an open descriptor. On this host it is the
  authority: the kernel grants it to one open file at a time and drops it when the holder exits in
  any way, SIGKILL included. The descriptor is close-on-exec, so a killed holder's children
  (ansible, terraform) do not keep the environment locked.
- `.orchestrate/<env>/lock.json`: the holder record (user, host, pid, command, since, run id,
  lease expiry, a random token), replaced atomically and renewed by a heartbeat thread. It is what
  a waiting process shows ("waiting for lock held by root@box pid 1234 since ... (orchestrate up
  dev)") and what covers holders on *other* hosts sharing the project directory, where flock
  proves nothing.

Stale locks. After getting the flock, a record that was not cleared means its writer is gone:

- holder on this host: the kernel released its flock, so it exited (or was killed): take over;
- holder on another host: take over only once its lease has expired (it stopped renewing).

Every takeover is returned to the caller (`acquire()` and `lock.takeover`) and written to the
audit log. A holder on this host that is alive but hung keeps the lock, lease or not: the flock
says it still runs, and a hung process that wakes up would carry on changing the environment, so
taking over would let two runs act at once. The waiting message names its pid so an operator can
decide to kill it; after that the lock is free at once. Leases therefore only ever decide about
holders on other hosts, whose liveness cannot be checked from here.

A holder can call `check()` between steps: it raises LockLost if the record no longer names it
(another host took over after its lease lapsed, e.g. while it was suspended).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import LockBusy, OrchestratorError
from orchestrator.files import atomic_write
from orchestrator.runs.audit import AuditLog
from orchestrator.runs.identity import ProcessIdentity, isoformat, parse_time, pid_alive

LOCK_FILE = "lock"


HOLDER_FILE = "lock.json"


#: how long a command waits for a busy lock unless told otherwise: an operator's second command
#: waits for the first (visibly, naming the holder), but not forever; cron passes its own
DEFAULT_LOCK_WAIT = 600.0
DEFAULT_LEASE = 30.0


DEFAULT_HEARTBEAT = 10.0


#: how long a busy lock's missing or stale holder record is re-read before it is reported
RECORD_GRACE = 1.0


WaitCallback = Callable[[str], None]


class EnvironmentLocked(LockBusy):
    """The lock is held and waiting was not allowed, or the wait timed out (exit 75)."""

    def __init__(self, message: str, *, holder: Holder | None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder


class LockLost(OrchestratorError):
    """This process no longer holds the environment lock (another host took it over)."""


@dataclass(frozen=True)
class Holder:
    """The holder record of the lock."""

    user: str
    host: str
    pid: int
    command: str
    env: str
    since: str
    lease_expires: str
    token: str
    run_id: str | None = None
    pid_start: int | None = None

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(user=self.user, host=self.host, pid=self.pid, pid_start=self.pid_start)

    def describe(self) -> str:
        """`root@host pid 1234 since 2026-11-23 18:15:00 (orchestrate up dev)`."""
        since = parse_time(self.since).strftime("%Y-%m-%d %H:%M:%S")
        run = f", run {self.run_id}" if self.run_id else ""
        return f"{self.user}@{self.host} pid {self.pid} since {since} ({self.command}{run})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Holder:
        return cls(
            user=str(data["user"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            command=str(data["command"]),
            env=str(data.get("env", "")),
            since=str(data["since"]),
            lease_expires=str(data["lease_expires"]),
            token=str(data["token"]),
            run_id=data.get("run_id"),
            pid_start=data.get("pid_start"),
        )


@dataclass(frozen=True)
class Takeover:
    """A stale lock this process took over: whose it was and why it was considered stale."""

    previous: Holder
    reason: str
    at: str

    def describe(self) -> str:
        return f"took over the lock held by {self.previous.describe()}: {self.reason}"


def read_holder(state_dir: Path) -> Holder | None:
    """The holder record of an environment's lock, or None (free, or record unreadable)."""
    return _read_holder(Path(state_dir) / HOLDER_FILE)


def _read_holder(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder.from_dict(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # a record is only ever replaced by rename, so this is damage, not a half-written file:
        # treat it as no record, and the flock still decides
        return None


class EnvironmentLock:
    """The lock of one environment. Use `acquire()`/`release()` or `with EnvironmentLock(...)`.

    `command` is what waiting processes are shown (e.g. "orchestrate up dev"); `run_id` can be set
    later with `set_run_id()`. `on_wait` receives the "waiting for lock held by ..." message when
    waiting starts and whenever the holder changes. `audit` receives takeovers (default: the
    environment's AuditLog). `identity`, `clock` and `lock_path` exist for tests that simulate
    holders on other hosts.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        command: str,
        env: str | None = None,
        run_id: str | None = None,
        wait: float | None = None,
        lease: float = DEFAULT_LEASE,
        heartbeat: float | None = DEFAULT_HEARTBEAT,
        on_wait: WaitCallback | None = None,
        audit: AuditLog | None = None,
        identity: ProcessIdentity | None = None,
        clock: Callable[[], float] = time.time,
        poll: float = 0.1,
        lock_path: Path | None = None,
    ) -> None:
        if heartbeat is not None and heartbeat >= lease:
            raise ValueError(f"heartbeat ({heartbeat} s) must be shorter than the lease ({lease} s)")
        self.state_dir = Path(state_dir)
        self.env = env or self.state_dir.name
        self.command = command
        self.run_id = run_id
        self.wait = wait
        self.lease = lease
        self.heartbeat = heartbeat
        self.on_wait = on_wait
        self.identity = identity or ProcessIdentity.current()
        self.clock = clock
        self.poll = poll
        self.lock_path = lock_path or self.state_dir / LOCK_FILE
        self.holder_path = self.state_dir / HOLDER_FILE
        self.takeover: Takeover | None = None
        self._audit = audit
        self._fd: int | None = None
        self._token: str | None = None
        self._since: str | None = None
        self._mutex = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # -- acquiring -------------------------------------------------------------------------

    def acquire(self, wait: float | None = None) -> Takeover | None:
        """Take the lock, waiting up to `wait` seconds (None: as long as it takes; 0: not at all).

        Returns the Takeover when a stale holder was replaced (also kept in `self.takeover` and
        written to the audit log). Raises EnvironmentLocked (a LockBusy, exit 75) with the
        holder's description when the lock stays busy.
        """
        if self._fd is not None:
            raise OrchestratorError(f"the lock of environment {self.env} is already held by this object")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        deadline = None if wait is None else time.monotonic() + wait
        # A new holder writes its record just after it gets the flock; a process that loses the
        # race in that instant would see no record, or the dead predecessor's. It retries for up
        # to RECORD_GRACE seconds (even with wait=0) so that what it reports names the holder.
        grace = time.monotonic() + RECORD_GRACE
        shown: str | None = None
        while True:
            acquired, busy = self._try_acquire()
            if acquired:
                if self.takeover is not None:
                    self._record_takeover(self.takeover)
                self._start_heartbeat()
                return self.takeover
            if not self._names_live_holder(busy) and time.monotonic() < grace:
                time.sleep(0.01)
                continue
            holder_text = busy.describe() if busy else "another process (its holder record is not written yet)"
            if deadline is not None and time.monotonic() >= deadline:
                waited = "" if not wait else f" after waiting {wait:g} s"
                raise EnvironmentLocked(
                    f"environment {self.env} is locked by {holder_text}{waited}",
                    holder=busy,
                    hint="wait for it to finish, or pass --lock-wait SECONDS to wait for it",
                )
            message = f"waiting for lock held by {holder_text}"
            if self.on_wait is not None and message != shown:
                self.on_wait(message)
            shown = message
            time.sleep(self.poll if deadline is None else max(0.0, min(self.poll, deadline - time.monotonic())))

    def _names_live_holder(self, holder: Holder | None) -> bool:
        """Whether a busy lock's record is the current holder's (not missing, not a dead one's)."""
        if holder is None:
            return False
        return holder.host != self.identity.host or pid_alive(holder.pid, holder.pid_start)

    def _try_acquire(self) -> tuple[bool, Holder | None]:
        """One attempt: (True, None) when acquired, else (False, the holder if it is recorded)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False, _read_holder(self.holder_path)
        except BaseException:
            os.close(fd)
            raise
        previous = _read_holder(self.holder_path)
        takeover: Takeover | None = None
        if previous is not None:
            reason = self._stale_reason(previous)
            if reason is None:
                # a live holder on another host: the flock here proves nothing about it
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                return False, previous
            takeover = Takeover(previous=previous, reason=reason, at=self._now_iso())
        with self._mutex:
            self._fd = fd
            self._token = secrets.token_hex(8)
            self._since = self._now_iso()
            self.takeover = takeover
            self.lost = False
            try:
                self._write_record()
            except BaseException:
                self._drop_fd()
                raise
        return True, None

    def _stale_reason(self, previous: Holder) -> str | None:
        """Why `previous` no longer holds the lock we just flocked, or None if it may still."""
        if previous.host == self.identity.host:
            if not pid_alive(previous.pid, previous.pid_start):
                return f"its process (pid {previous.pid}) is gone from {previous.host}"
            # alive but not holding the flock: it was restarted in place or its pid was reused
            return f"pid {previous.pid} on {previous.host} no longer holds the lock file"
        expires = parse_time(previous.lease_expires)
        if self._now() < expires:
            return None
        return (f"its lease expired at {expires.strftime('%Y-%m-%d %H:%M:%S')} UTC "
                f"(holder on another host, {previous.host}, stopped renewing it)")

    def _record_takeover(self, takeover: Takeover) -> None:
        audit = self._audit or AuditLog(self.state_dir, env=self.env, identity=self.identity)
        try:
            audit.record(
                command="lock takeover",
                outcome="taken_over",
                run_id=self.run_id,
                details={
                    "reason": takeover.reason,
                    "previous": takeover.previous.as_dict(),
                    "by_command": self.command,
                },
                identity=self.identity,
            )
        except BaseException:
            self.release()
            raise
        finally:
            if self._audit is None:
                audit.close()

    # -- holding ---------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Whether this object acquired the lock and has not released it."""
        return self._fd is not None

    def holds(self) -> bool:
        """Whether the holder record still names this object (read from disk)."""
        current = _read_holder(self.holder_path)
        return self._token is not None and current is not None and current.token == self._token

    def check(self) -> None:
        """Raise LockLost unless this object still holds the lock; renews the lease otherwise."""
        with self._mutex:
            if self._fd is None:
                raise LockLost(f"the lock of environment {self.env} is not held")
            if not self.renew():
                current = _read_holder(self.holder_path)
                by = current.describe() if current else "nobody (record removed)"
                raise LockLost(f"lost the lock of environment {self.env}: it is now held by {by}")

    def renew(self) -> bool:
        """Extend the lease if the record still names us; False (and `lost`) otherwise."""
        with self._mutex:
            if self._fd is None or self.lost:
                return False
            if not self.holds():
                self.lost = True
                return False
            self._write_record()
            return True

    def set_run_id(self, run_id: str) -> None:
        """Name the run in the holder record (the run id is known after the lock is taken)."""
        with self._mutex:
            self.run_id = run_id
            if self._fd is not None and self.holds():
                self._write_record()

    def holder(self) -> Holder | None:
        """The current holder record (whoever holds it)."""
        return _read_holder(self.holder_path)

    def _write_record(self) -> None:
        assert self._token is not None and self._since is not None
        holder = Holder(
            user=self.identity.user,
            host=self.identity.host,
            pid=self.identity.pid,
            pid_start=self.identity.pid_start,
            command=self.command,
            env=self.env,
            since=self._since,
            lease_expires=isoformat(datetime.fromtimestamp(self.clock() + self.lease, UTC)),
            token=self._token,
            run_id=self.run_id,
        )
        atomic_write(self.holder_path, json.dumps(holder.as_dict(), indent=2) + "\n")

    def _start_heartbeat(self) -> None:
        if self.heartbeat is None:
            return
        self._stop.clear()
        interval = self.heartbeat

        def beat() -> None:
            while not self._stop.wait(interval):
                with contextlib.suppress(OSError):  # a full disk must not kill the run; check() will tell
                    if not self.renew():
                        return

        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat-{self.env}", daemon=True)
        self._thread.start()

    # -- releasing -------------------------------------------------------------------------

    def release(self) -> None:
        """Clear the holder record (if it is still ours) and drop the flock. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        with self._mutex:
            if self._fd is None:
                return
            try:
                # another host may have taken over after our lease lapsed: its record stays
                if self.holds():
                    with contextlib.suppress(FileNotFoundError):
                        self.holder_path.unlink()
            finally:
                self._drop_fd()

    def _drop_fd(self) -> None:
        fd, self._fd = self._fd, None
        self._token = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _abandon(self) -> None:
        """Drop the flock without clearing the record: what a SIGKILL leaves behind (for tests)."""
        self._stop.set()
        with self._mutex:
            self._drop_fd()

    @contextlib.contextmanager
    def hold(self, wait: float | None = None) -> Iterator[EnvironmentLock]:
        """Hold the lock for the block: `with lock.hold(wait=0): ...`."""
        self.acquire(wait)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> EnvironmentLock:
        self.acquire(self.wait)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # -- time --------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _now_iso(self) -> str:
        return isoformat(self._now())
