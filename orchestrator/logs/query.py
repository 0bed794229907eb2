"""What `orchestrate logs` asks a journal for, and the `journalctl` argv that asks it (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.config.types import parse_duration
from orchestrator.errors import UsageError
from orchestrator.logs.entries import FIELDS

#: lines shown when neither --since nor -n is given (journalctl's own default when following: 10)
DEFAULT_LINES = 100
DEFAULT_FOLLOW_LINES = 10

_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")


@dataclass(frozen=True)
class LogQuery:
    """Which entries: a unit (None: the service's on app hosts, the whole journal elsewhere), a
    start, a line count, a pattern, and whether to follow."""

    unit: str | None = None
    since: float | None = None
    """Seconds since the epoch (the controller's clock, so every host is cut at the same moment)."""
    lines: int | None = None
    grep: str | None = None
    follow: bool = False

    @property
    def effective_lines(self) -> int | None:
        """-n per host: as given; else a default when there is no --since; else all since."""
        if self.lines is not None:
            return self.lines
        if self.since is not None:
            return None
        return DEFAULT_FOLLOW_LINES if self.follow else DEFAULT_LINES


def parse_since(text: str, now: datetime | None = None) -> float:
    """`--since`: a duration back from now (`10m`, `1h30m`), `@EPOCH`, or an ISO 8601 time (UTC when
    it names no zone); seconds since the epoch. UsageError with the accepted forms otherwise."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if value.startswith("@"):
        try:
            return float(value[1:])
        except ValueError:
            pass
    else:
        try:
            return now.timestamp() - parse_duration(value)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(value)
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            pass
    raise UsageError(f"--since {text!r} is not a duration such as 10m or 1h30m, @EPOCH_SECONDS, or a time such "
                     "as 2026-12-02T18:00:00")


def check_unit(unit: str) -> str:
    """A systemd unit name as given to --unit (letters, digits and :_.@-\\ only)."""
    if not _UNIT_RE.match(unit):
        raise UsageError(f"--unit {unit!r} is not a systemd unit name such as hello.service or haproxy")
    return unit


def journalctl_argv(query: LogQuery, *, unit: str | None, sudo: bool = False) -> list[str]:
    """The `journalctl` argv of one host's part of `query` (pure). A follow that reconnects asks
    again with `since` where it stopped and no line count."""
    argv = ["sudo", "-n"] if sudo else []
    argv += ["journalctl", "--no-pager", "--quiet", "-o", "json", f"--output-fields={','.join(FIELDS)}"]
    if unit:
        argv += ["-u", unit]
    if query.since is not None:
        argv.append(f"--since=@{query.since:.6f}")
    count = query.effective_lines
    if count is not None:
        argv += ["-n", str(count)]
    if query.grep:
        argv += ["--grep", query.grep]
    if query.follow:
        argv.append("--follow")
    return argv
