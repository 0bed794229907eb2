"""Where a host's journal is read from: `LogSource`, and today's source, each host over SSH.

`SshJournal` runs one `journalctl -o json` per host over SSH (orchestrator.tools.ssh, through the
address guard, with the project's key). A follow keeps one session per host; when a session ends
(the host rebooted, the network dropped) it reconnects with backoff and asks for what came after
the last entry it delivered (`--since` that entry's time, the entries already seen skipped), so a
reboot loses nothing that reached the new journal.

This is the seam for a central log host: a source that reads the journals systemd-journal-remote
collects on the monitoring host (one `journalctl --directory=... -o json` there, `_HOSTNAME`
mapped back to the host) implements the same two methods, and `log_source` picks it when the
environment has one. The CLI neither knows nor cares which source answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import OrchestratorError
from orchestrator.fleet.inventory import Host
from orchestrator.fleet.remote import Connection, connection, run_on_hosts
from orchestrator.logs.entries import LogEntry, parse_journal, parse_journal_line
from orchestrator.logs.query import LogQuery, journalctl_argv
from orchestrator.tools.ssh import SshOptions, remote_argv, start_ssh

EntrySink = Callable[[LogEntry], None]
NoticeSink = Callable[[str, str], None]
"""(host, message): a session ended, reconnecting, refused..."""

#: seconds a one-shot read may take per host
READ_TIMEOUT = 60.0
#: reconnect backoff: first wait, longest wait (seconds)
BACKOFF = (1.0, 5.0)


@dataclass
class LogBatch:
    """A one-shot read: each host's entries, and the hosts that could not be read (and why)."""

    entries: dict[str, list[LogEntry]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class LogSource(Protocol):
    """Reads the journals of hosts."""

    def read(self, query: LogQuery, hosts: Sequence[Host]) -> LogBatch:
        """Each host's entries matching `query` (not following)."""
        ...

    def follow(self, query: LogQuery, hosts: Sequence[Host], sink: EntrySink, notice: NoticeSink,
               stop: threading.Event) -> None:
        """Deliver every new entry to `sink` (from any thread) until `stop` is set."""
        ...


def default_unit(host: Host, service_unit: str) -> str | None:
    """The unit whose journal is shown when --unit is not given: the service's on an app host,
    every unit on the others (pure)."""
    return service_unit if "app" in host.groups else None


@dataclass
class _FollowState:
    """Where one host's follow stands: the last entry delivered (its time and the cursors there)."""

    last_us: int | None = None
    cursors: set[str] = field(default_factory=set)

    def fresh(self, entry: LogEntry) -> bool:
        """Whether `entry` was not delivered yet (a reconnect asks again from the last time)."""
        if self.last_us is not None and (entry.timestamp_us < self.last_us
                                         or (entry.timestamp_us == self.last_us and entry.cursor in self.cursors)):
            return False
        if entry.timestamp_us != self.last_us:
            self.last_us, self.cursors = entry.timestamp_us, set()
        self.cursors.add(entry.cursor)
        return True


class SshJournal:
    """Each host's own journal, over one SSH session per host."""

    def __init__(self, conn: Connection, unit_of: Callable[[Host, LogQuery], str | None]) -> None:
        self.conn = conn
        self.unit_of = unit_of

    def command(self, query: LogQuery, host: Host) -> str:
        """The remote command line for `host` (the journalctl argv, quoted word by word)."""
        sudo = self.conn.user != "root"
        return remote_argv(journalctl_argv(query, unit=self.unit_of(host, query), sudo=sudo))

    def read(self, query: LogQuery, hosts: Sequence[Host]) -> LogBatch:
        batch = LogBatch()
        for run in run_on_hosts(self.conn, hosts, lambda h: self.command(query, h), timeout=READ_TIMEOUT):
            if run.error or run.exit_code not in (0, 1):
                # journalctl exits 1 with no entry matching --grep: not a failure
                batch.errors[run.host] = run.error or (run.stderr.strip().splitlines() or [f"exit {run.exit_code}"])[-1]
            batch.entries[run.host] = parse_journal(run.host, run.stdout)
        return batch

    def follow(self, query: LogQuery, hosts: Sequence[Host], sink: EntrySink, notice: NoticeSink,
               stop: threading.Event) -> None:
        threads = [threading.Thread(target=self._follow_host, args=(query, h, sink, notice, stop), daemon=True,
                                    name=f"logs-{h.name}") for h in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)

    def _follow_host(self, query: LogQuery, host: Host, sink: EntrySink, notice: NoticeSink,
                     stop: threading.Event) -> None:
        state = _FollowState()
        lock = threading.Lock()
        backoff = BACKOFF[0]
        asked = replace(query, follow=True)

        def on_line(line: str) -> None:
            entry = parse_journal_line(host.name, line)
            if entry is None:
                return
            with lock:
                if not state.fresh(entry):
                    return
            sink(entry)

        errors: list[str] = []
        while not stop.is_set():
            errors.clear()
            started = time.monotonic()
            try:
                session = start_ssh(self.conn.target(host), self.command(asked, host), guard=self.conn.guard,
                                    on_stdout=on_line, on_stderr=errors.append, options=SshOptions.follow())
            except OrchestratorError as exc:
                notice(host.name, f"cannot follow: {exc.message}")
                return
            while not stop.is_set() and session.wait(timeout=0.5) is None:
                pass
            if stop.is_set():
                session.stop()
                return
            why = (errors[-1] if errors else f"exit {session.poll()}").strip()
            if time.monotonic() - started > 10:
                backoff = BACKOFF[0]
            notice(host.name, f"session ended ({why}); reconnecting in {backoff:g} s")
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF[1])
            with lock:
                if state.last_us is not None:
                    # everything after the last entry delivered (also across a reboot: a new journal)
                    asked = replace(asked, since=state.last_us / 1_000_000, lines=None)


def log_source(loaded: LoadedEnvironment) -> LogSource:
    """The source of `loaded`'s logs: today each host's own journal over SSH (see the module doc
    for the central log host)."""
    unit = f"{loaded.env.service.name}.service"
    return SshJournal(connection(loaded), lambda host, query: query.unit or default_unit(host, unit))
