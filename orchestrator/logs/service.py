"""`orchestrate logs`: the entries of the chosen hosts, merged by time, read once or followed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.fleet.inventory import Host
from orchestrator.fleet.remote import inventory_hosts
from orchestrator.fleet.select import select_hosts
from orchestrator.logs.entries import LogEntry, last, merge
from orchestrator.logs.query import LogQuery
from orchestrator.logs.sources import EntrySink, LogSource, NoticeSink, log_source


@dataclass(frozen=True)
class LogsRequest:
    """Which hosts (names or globs, or a group; default: the app hosts) and which entries."""

    hosts: tuple[str, ...] = ()
    group: str | None = None
    query: LogQuery = field(default_factory=LogQuery)


@dataclass
class LogsResult:
    """A one-shot read: the merged entries and the hosts that could not be read."""

    env: str
    hosts: list[str]
    entries: list[LogEntry]
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "hosts": self.hosts, "errors": self.errors,
                "entries": [e.as_dict() for e in self.entries]}


def chosen_hosts(loaded: LoadedEnvironment, request: LogsRequest) -> list[Host]:
    """The hosts of the request (UsageError for a name or glob that matches none)."""
    return select_hosts(inventory_hosts(loaded), request.hosts, request.group)


def read_logs(loaded: LoadedEnvironment, request: LogsRequest, *, source: LogSource | None = None) -> LogsResult:
    """The entries of every chosen host, merged by time; with a line count, the last ones overall."""
    hosts = chosen_hosts(loaded, request)
    batch = (source or log_source(loaded)).read(request.query, hosts)
    merged = merge(batch.entries.get(h.name, []) for h in hosts)
    entries = last(merged, request.query.lines)
    return LogsResult(env=loaded.name, hosts=[h.name for h in hosts], entries=entries, errors=batch.errors)


def follow_logs(loaded: LoadedEnvironment, request: LogsRequest, sink: EntrySink, notice: NoticeSink,
                stop: threading.Event, *, hosts: Sequence[Host] | None = None,
                source: LogSource | None = None) -> None:
    """Deliver the chosen hosts' new entries to `sink` until `stop` is set, reconnecting to hosts
    whose session ends (see orchestrator.logs.sources)."""
    chosen = list(hosts) if hosts is not None else chosen_hosts(loaded, request)
    (source or log_source(loaded)).follow(request.query, chosen, sink, notice, stop)
