"""Who runs and when: process identity (user, host, pid, start time) to tell a live holder from a
dead one, UTC timestamps and run ids.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of `pid` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` (clock ticks since boot), to tell a reused pid from the original."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process `pid` (started at `start_ticks`, when known) still runs on this host.

    A zombie counts as dead: a SIGKILLed child that its parent has not reaped yet will never run
    another step. A pid reused by a younger process (different start time) also counts as dead.
    """
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # no /proc (not Linux): signal 0 is all we can know
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    return start_ticks is None or ticks == start_ticks


@dataclass(frozen=True)
class ProcessIdentity:
    """Who acts: user, host and process (with its start time, to survive pid reuse)."""

    user: str
    host: str
    pid: int
    pid_start: int | None = None

    @classmethod
    def current(cls) -> ProcessIdentity:
        """The identity of this process."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers with arbitrary uids)
            user = str(os.geteuid())
        pid = os.getpid()
        return cls(user=user, host=socket.gethostname(), pid=pid, pid_start=process_start_ticks(pid))

    def is_local(self) -> bool:
        """Whether this identity names a process on this host."""
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """True/False for a process on this host; None when it runs elsewhere (unknowable here)."""
        if not self.is_local():
            return None
        return pid_alive(self.pid, self.pid_start)

    def describe(self) -> str:
        return f"{self.user}@{self.host} pid {self.pid}"


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """The timestamp format of every record: ISO 8601, UTC, microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """Inverse of isoformat (naive input is taken as UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_run_id(moment: datetime | None = None) -> str:
    """A sortable run id such as `20261123T181500-abcd`."""
    stamp = (moment or utcnow()).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"
