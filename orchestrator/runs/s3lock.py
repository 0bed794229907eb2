"""The environment lock of an environment shared through S3: one holder at a time across every
controller, with the holder record, lease, heartbeat and takeover of the local lock
(orchestrator.runs.lock), where the record itself is the lock.

`PREFIX/lock.json` exists exactly while someone holds the lock. It is created with
`If-None-Match: *` (two controllers creating it at once: S3 lets one through), renewed by the
holder's heartbeat with `If-Match` on the ETag it wrote last (a renewal that fails means another
controller took the lock over: `check()` then raises LockLost), and deleted on release with
`If-Match` (a record that is no longer ours stays).

A record is stale, and taken over (again with `If-Match`, so only one taker wins, and audited),
when its holder is on this host and its process is gone, or when its lease has run out: the
holder stopped renewing it. The lease is measured with S3's clock (the record's Last-Modified
against the Date of the response that read it), so controllers' clocks need not agree. As
locally, a live holder is never displaced.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

from orchestrator.errors import OrchestratorError
from orchestrator.runs.identity import ProcessIdentity, isoformat, pid_alive
from orchestrator.runs.lock import (
    DEFAULT_HEARTBEAT,
    DEFAULT_LEASE,
    EnvironmentLocked,
    Holder,
    LockLost,
    Takeover,
    WaitCallback,
)
from orchestrator.tools.s3 import ObjectStore, PreconditionFailed, StoredObject

#: how often a waiting process asks S3 again
POLL = 0.5


class AuditSink(Protocol):
    def record(self, *, command: str, outcome: str, run_id: str | None = ..., details: Any = ...,
               identity: ProcessIdentity | None = ...) -> object: ...


@dataclass(frozen=True)
class _Found:
    holder: Holder | None
    stored: StoredObject
    lease: float


class S3EnvironmentLock:
    """The lock of one environment in S3. Use `acquire()`/`release()` or `with S3EnvironmentLock(...)`."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        *,
        command: str,
        env: str,
        run_id: str | None = None,
        wait: float | None = None,
        lease: float = DEFAULT_LEASE,
        heartbeat: float | None = DEFAULT_HEARTBEAT,
        on_wait: WaitCallback | None = None,
        audit: AuditSink | None = None,
        identity: ProcessIdentity | None = None,
        poll: float = POLL,
    ) -> None:
        if heartbeat is not None and heartbeat >= lease:
            raise ValueError(f"heartbeat ({heartbeat} s) must be shorter than the lease ({lease} s)")
        self.store = store
        self.key = key
        self.env = env
        self.command = command
        self.run_id = run_id
        self.wait = wait
        self.lease = lease
        self.heartbeat = heartbeat
        self.on_wait = on_wait
        self.identity = identity or ProcessIdentity.current()
        self.poll = poll
        self.takeover: Takeover | None = None
        self.lost = False
        self._audit = audit
        self._etag: str | None = None
        self._token: str | None = None
        self._since: str | None = None
        self._mutex = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def location(self) -> str:
        return self.store.url(self.key)

    # -- acquiring -------------------------------------------------------------------------

    def acquire(self, wait: float | None = None) -> Takeover | None:
        """Take the lock, waiting up to `wait` seconds (None: as long as it takes; 0: not at all).

        Returns the Takeover when a stale holder was replaced; EnvironmentLocked (exit 75) naming
        the holder when the lock stays busy.
        """
        if self._etag is not None:
            raise OrchestratorError(f"the lock of environment {self.env} is already held by this object")
        deadline = None if wait is None else time.monotonic() + wait
        shown: str | None = None
        retries = 3  # a record released (or being replaced) between the read and the write: ask again
        while True:
            acquired, busy = self._try_acquire()
            if not acquired and busy is None and retries > 0:
                retries -= 1
                continue
            if acquired:
                if self.takeover is not None and self._audit is not None:
                    try:
                        self._audit.record(command="lock takeover", outcome="taken_over", run_id=self.run_id,
                                           details={"reason": self.takeover.reason,
                                                    "previous": self.takeover.previous.as_dict(),
                                                    "by_command": self.command, "lock": self.location},
                                           identity=self.identity)
                    except BaseException:
                        self.release()
                        raise
                self._start_heartbeat()
                return self.takeover
            holder_text = busy.describe() if busy else "another controller (its holder record is unreadable)"
            if deadline is not None and time.monotonic() >= deadline:
                waited = "" if not wait else f" after waiting {wait:g} s"
                raise EnvironmentLocked(f"environment {self.env} is locked by {holder_text}{waited} ({self.location})",
                                        holder=busy, hint="wait for it to finish, or pass --lock-wait SECONDS to "
                                                          "wait for it")
            message = f"waiting for lock held by {holder_text}"
            if self.on_wait is not None and message != shown:
                self.on_wait(message)
            shown = message
            time.sleep(self.poll if deadline is None else max(0.0, min(self.poll, deadline - time.monotonic())))

    def _read(self) -> _Found | None:
        stored = self.store.get(self.key)
        if stored is None:
            return None
        try:
            data = json.loads(stored.body)
            return _Found(Holder.from_dict(data), stored, float(data.get("lease_seconds", DEFAULT_LEASE)))
        except (ValueError, KeyError, TypeError):
            return _Found(None, stored, DEFAULT_LEASE)

    def _try_acquire(self) -> tuple[bool, Holder | None]:
        """One attempt: (True, None) when acquired, else (False, the holder if its record reads)."""
        found = self._read()
        token = secrets.token_hex(8)
        since = isoformat(datetime.now(UTC))
        takeover: Takeover | None = None
        if found is not None:
            reason = self._stale_reason(found)
            if reason is None:
                return False, found.holder
            previous = found.holder or Holder(user="?", host="?", pid=0, command="(unreadable record)", env=self.env,
                                              since=since, lease_expires=since, token="")
            takeover = Takeover(previous=previous, reason=reason, at=since)
        body = self._record(token, since)
        try:
            etag = (self.store.put(self.key, body, if_match=found.stored.etag) if found is not None
                    else self.store.put(self.key, body, if_none_match=True))
        except PreconditionFailed:
            mine = self._read()  # a retried request of ours that had succeeded looks the same
            if mine is None or mine.holder is None or mine.holder.token != token:
                return False, mine.holder if mine is not None else None
            etag = mine.stored.etag
        with self._mutex:
            self._etag, self._token, self._since = etag, token, since
            self.takeover = takeover
            self.lost = False
        return True, None

    def _stale_reason(self, found: _Found) -> str | None:
        holder = found.holder
        if holder is None:
            age = (found.stored.server_time - found.stored.last_modified).total_seconds()
            return f"its record is unreadable and {age:.0f} s old" if age > found.lease else None
        if holder.host == self.identity.host and not pid_alive(holder.pid, holder.pid_start):
            return f"its process (pid {holder.pid}) is gone from {holder.host}"
        expires = found.stored.last_modified + timedelta(seconds=found.lease)
        if found.stored.server_time < expires:
            return None
        return (f"its lease expired at {expires.strftime('%Y-%m-%d %H:%M:%S')} UTC (S3's clock): "
                f"its holder on {holder.host} stopped renewing it")

    def _record(self, token: str, since: str) -> bytes:
        holder = Holder(user=self.identity.user, host=self.identity.host, pid=self.identity.pid,
                        pid_start=self.identity.pid_start, command=self.command, env=self.env, since=since,
                        lease_expires=isoformat(datetime.now(UTC) + timedelta(seconds=self.lease)), token=token,
                        run_id=self.run_id)
        return (json.dumps({**holder.as_dict(), "lease_seconds": self.lease}, indent=2) + "\n").encode()

    # -- holding ---------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Whether this object acquired the lock and has not released it."""
        return self._etag is not None

    def holder(self) -> Holder | None:
        """The current holder record (whoever holds it)."""
        found = self._read()
        return found.holder if found is not None else None

    def holds(self) -> bool:
        """Whether the record in S3 still names this object."""
        current = self.holder()
        return self._token is not None and current is not None and current.token == self._token

    def renew(self) -> bool:
        """Extend the lease if the record is still ours (If-Match); False (and `lost`) otherwise."""
        with self._mutex:
            if self._etag is None or self.lost or self._token is None or self._since is None:
                return False
            body = self._record(self._token, self._since)
            try:
                self._etag = self.store.put(self.key, body, if_match=self._etag)
            except PreconditionFailed:
                found = self._read()
                if found is None or found.holder is None or found.holder.token != self._token:
                    self.lost = True
                    return False
                self._etag = found.stored.etag  # our own write, answered twice
            return True

    def check(self) -> None:
        """Raise LockLost unless this object still holds the lock; renews the lease otherwise."""
        with self._mutex:
            if self._etag is None:
                raise LockLost(f"the lock of environment {self.env} is not held")
            if not self.renew():
                current = self.holder()
                by = current.describe() if current else "nobody (record removed)"
                raise LockLost(f"lost the lock of environment {self.env} ({self.location}): it is now held by {by}")

    def set_run_id(self, run_id: str) -> None:
        """Name the run in the holder record."""
        with self._mutex:
            self.run_id = run_id
            if self._etag is not None:
                self.renew()

    def _start_heartbeat(self) -> None:
        if self.heartbeat is None:
            return
        self._stop.clear()
        interval = self.heartbeat

        def beat() -> None:
            while not self._stop.wait(interval):
                # S3 unreachable for a while must not kill the run; check() before each step tells
                with contextlib.suppress(OrchestratorError):
                    if not self.renew():
                        return

        self._thread = threading.Thread(target=beat, name=f"s3-lock-heartbeat-{self.env}", daemon=True)
        self._thread.start()

    # -- releasing -------------------------------------------------------------------------

    def release(self) -> None:
        """Delete the record if it is still ours (If-Match). Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        with self._mutex:
            etag, self._etag, self._token = self._etag, None, None
            if etag is None:
                return
            # taken over after our lease lapsed: the new holder's record stays
            with contextlib.suppress(PreconditionFailed):
                self.store.delete(self.key, if_match=etag)

    @contextlib.contextmanager
    def hold(self, wait: float | None = None) -> Iterator[S3EnvironmentLock]:
        """Hold the lock for the block."""
        self.acquire(wait)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> S3EnvironmentLock:
        self.acquire(self.wait)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_names_run(store: ObjectStore, key: str) -> Callable[[str], bool]:
    """`alive(run_id)` for orchestrator.runs.s3journal: whether the lock's holder, its lease not run
    out, names the run (read once, when called first)."""
    cache: dict[str, Holder | None] = {}

    def alive(run_id: str) -> bool:
        if "holder" not in cache:
            probe = S3EnvironmentLock(store, key, command="", env="", heartbeat=None)
            found = probe._read()
            cache["holder"] = None if found is None or probe._stale_reason(found) else found.holder
        holder = cache["holder"]
        return holder is not None and holder.run_id == run_id

    return alive
