"""Journal entries as `journalctl -o json` writes them, read and merged across hosts (pure)."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: the journal fields a query asks for (the cursor and timestamps come with every entry)
FIELDS = ("MESSAGE", "PRIORITY", "_PID", "_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_HOSTNAME")

PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


@dataclass(frozen=True)
class LogEntry:
    """One line of a host's journal."""

    host: str
    timestamp_us: int
    """__REALTIME_TIMESTAMP: microseconds since the epoch."""
    message: str
    unit: str = ""
    priority: int | None = None
    pid: int | None = None
    identifier: str = ""
    cursor: str = ""

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_us / 1_000_000, tz=UTC)

    def iso_time(self) -> str:
        """RFC 3339 UTC with microseconds: `2026-12-02T18:40:30.643513Z`."""
        return self.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def as_dict(self) -> dict[str, Any]:
        """The `--json` object of the entry: at least host, time and message."""
        data: dict[str, Any] = {"host": self.host, "time": self.iso_time(), "message": self.message,
                                "unit": self.unit or None,
                                "priority": PRIORITIES[self.priority] if self.priority is not None else None,
                                "pid": self.pid}
        if self.identifier:
            data["identifier"] = self.identifier
        return data


def _text(value: Any) -> str:
    """A journal field's text: a string, or a byte array (non-UTF-8 messages) decoded leniently."""
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(b & 0xFF for b in value).decode("utf-8", "replace")
    if isinstance(value, list):  # a field given several times: journalctl repeats it as a list
        return " ".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def parse_journal_line(host: str, line: str) -> LogEntry | None:
    """One line of `journalctl -o json` as an entry of `host`; None for anything that is not an
    entry (blank lines, `-- No entries --`, a truncated last line)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    stamp = _int(data.get("__REALTIME_TIMESTAMP"))
    if stamp is None:
        return None
    priority = _int(data.get("PRIORITY"))
    return LogEntry(
        host=host, timestamp_us=stamp, message=_text(data.get("MESSAGE")),
        unit=_text(data.get("_SYSTEMD_UNIT")),
        priority=priority if priority is not None and 0 <= priority < len(PRIORITIES) else None,
        pid=_int(data.get("_PID")), identifier=_text(data.get("SYSLOG_IDENTIFIER")),
        cursor=_text(data.get("__CURSOR")),
    )


def parse_journal(host: str, text: str) -> list[LogEntry]:
    """Every entry in the output of one `journalctl -o json`, in journal order."""
    return [e for e in (parse_journal_line(host, line) for line in text.splitlines()) if e is not None]


def _key(entry: LogEntry) -> tuple[int, str]:
    return entry.timestamp_us, entry.host


def merge(streams: Iterable[Iterable[LogEntry]]) -> Iterator[LogEntry]:
    """The entries of several hosts in one stream ordered by time (each stream sorted first, so a
    host whose clock stepped back cannot break the order); ties keep host order."""
    return heapq.merge(*(sorted(s, key=_key) for s in streams), key=_key)


def last(entries: Iterable[LogEntry], count: int | None) -> list[LogEntry]:
    """The last `count` entries (all with None)."""
    found = list(entries)
    return found if count is None else found[-count:] if count > 0 else []


class ReorderBuffer:
    """Entries that arrive from several hosts at once, released in time order.

    Following several journals, an entry may arrive a little after a later one of another host;
    holding each for `delay` seconds after it arrived puts them back in order without a noticeable
    delay. Arrival times are the caller's clock (a host whose clock is off delays nothing).
    """

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        self._heap: list[tuple[int, int, float, LogEntry]] = []
        self._seq = 0

    def add(self, entry: LogEntry, arrived: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (entry.timestamp_us, self._seq, arrived, entry))

    def release(self, now: float, *, everything: bool = False) -> list[LogEntry]:
        """The entries due at `now` (all of them with `everything`), in time order."""
        out = []
        while self._heap and (everything or self._heap[0][2] <= now - self.delay):
            out.append(heapq.heappop(self._heap)[3])
        return out

    def __len__(self) -> int:
        return len(self._heap)
