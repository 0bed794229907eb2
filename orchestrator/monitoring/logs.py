"""Central logs: every host's journal on the monitoring host, and reading a host's lines back.

Every host runs systemd-journal-upload (roles/journal_upload) and sends its journal over HTTPS to
the monitoring host (roles/journal_remote), authenticated by a certificate of the environment's
own CA (orchestrator.monitoring.pki). Debian 12's systemd-journal-remote cannot check client
certificates (it is built without GnuTLS), so a TLS front on the monitoring host does: it admits
only certificates of that CA whose CN is a host of the fleet, and passes each host's uploads to
journal-remote from a loopback address of that host's own (`upload_source`). journal-remote files
uploads by source address, so a host's journal is

    /var/log/journal/remote/remote-<upload_source(host)>.journal   (+ rotated remote-<...>@*.journal)

named after its certificate, never after what its log lines claim. The address is derived from
the host's name alone, so the lines of a host that is down or destroyed (gone from the inventory)
are found all the same.

`CentralLogs.read` returns a host's lines from there (journalctl over SSH on the monitoring host);
`orchestrate logs` uses it when the environment has a monitoring host, and a failed health gate
keeps the failing host's central lines in its evidence (`keep_gate_evidence`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.types import parse_duration, parse_size
from orchestrator.errors import CommandError, OrchestratorError, UsageError
from orchestrator.fleet.inventory import Host, fleet_hosts
from orchestrator.fleet.remote import connection
from orchestrator.tools.process import CommandResult
from orchestrator.tools.ssh import SSH_FAILED, describe_failure, remote_argv, run_ssh

#: where the monitoring host receives uploads (the TLS front of roles/journal_remote)
FRONT_PORT = 19532


#: where journal-remote writes what it receives (roles/journal_remote journal_remote_output_dir)
REMOTE_DIR = "/var/log/journal/remote"


#: journal fields a LogLine is made of (journalctl adds the cursor and the timestamps itself)
FIELDS = ("MESSAGE", "PRIORITY", "_PID", "_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_COMM", "_HOSTNAME")


#: what journalctl says when the glob of a host's files matches nothing
NO_FILES = "No such file or directory"


#: file name of the central lines in a failed gate's evidence (beside health.txt, journal.txt, status.txt)
EVIDENCE_FILE = "central-journal.txt"


class LogsError(OrchestratorError):
    """The central logs could not be set up or read."""


@dataclass(frozen=True)
class LogLine:
    """One journal entry of a host, as read from the monitoring host."""

    time: datetime
    host: str
    message: str
    unit: str = ""
    identifier: str = ""
    pid: int | None = None
    priority: int | None = None

    def format(self) -> str:
        """`2026-12-02T18:42:28.123456+00:00 HOST IDENTIFIER[PID]: MESSAGE`, like journalctl -o short-iso-precise."""
        who = self.identifier or self.unit or "?"
        pid = f"[{self.pid}]" if self.pid is not None else ""
        return f"{self.time.isoformat(timespec='microseconds')} {self.host} {who}{pid}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(timespec="microseconds"), "host": self.host, "unit": self.unit,
                "identifier": self.identifier, "pid": self.pid, "priority": self.priority, "message": self.message}


def upload_source(host: str) -> str:
    """The loopback address a host's uploads reach journal-remote from (pure, from the name alone).

    127.b.c.d with b.c.d from the sha256 of the name and b never 0, so never 127.0.0.1 (journal-remote's
    own listener) nor anything else on 127.0.0.0/16.
    """
    digest = hashlib.sha256(host.encode()).digest()
    return f"127.{1 + digest[0] % 254}.{digest[1]}.{digest[2]}"


def journal_glob(host: str) -> str:
    """journalctl --file glob of a host's central journal files: the active one and the rotated ones."""
    # `[.@]` keeps remote-127.1.2.3 from matching remote-127.1.2.30
    return f"{REMOTE_DIR}/remote-{upload_source(host)}[.@]*journal"


def monitoring_host(hosts: Iterable[Host]) -> Host | None:
    """The environment's monitoring host (the first of group monitoring), if any."""
    return next((h for h in hosts if "monitoring" in h.groups), None)


def logs_enabled(loaded: LoadedEnvironment, hosts: Sequence[Host]) -> bool:
    """Whether central logs apply: monitoring and monitoring.logs enabled, and a monitoring host."""
    monitoring = loaded.env.monitoring
    return monitoring.enabled and monitoring.logs.enabled and monitoring_host(hosts) is not None


def upload_url(host: Host) -> str:
    """Where the fleet's hosts upload: the monitoring host's private address (its certificate names it)."""
    address = host.private_address or host.address
    return f"https://{f'[{address}]' if ':' in address else address}:{FRONT_PORT}"


def upload_clients(hosts: Sequence[Host]) -> list[dict[str, str]]:
    """The hosts the front admits, by certificate CN, with the loopback source of their uploads.

    LogsError when two names share a source (their journals would mix): rename one host.
    """
    clients: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for host in sorted(hosts, key=lambda h: h.name):
        source = upload_source(host.name)
        if source in seen:
            raise LogsError(f"hosts {seen[source]} and {host.name} map to the same central journal ({source}); "
                            "rename one of them")
        seen[source] = host.name
        clients.append({"name": host.name, "source": source})
    return clients


def playbook_vars(loaded: LoadedEnvironment, hosts: Sequence[Host] | None = None) -> dict[str, Any]:
    """Extra vars of playbooks/logs.yml; creates the CA and the host certificates it needs first.

    With central logs off (`logs_enabled` false) only `orchestrate_logs_enabled: false`, and no
    certificate is made.
    """
    hosts = list(hosts) if hosts is not None else fleet_hosts(loaded)
    monitor = monitoring_host(hosts)
    if monitor is None or not logs_enabled(loaded, hosts):
        return {"orchestrate_logs_enabled": False}
    # the CA needs `cryptography`, a twentieth of a second to import: only here, not for every
    # command that reads the central logs or keeps a gate's evidence
    from orchestrator.monitoring.pki import ensure_pki

    pki = ensure_pki(loaded, hosts)
    logs = loaded.env.monitoring.logs
    return {
        "orchestrate_logs_enabled": True,
        "orchestrate_pki_dir": str(pki.directory),
        "orchestrate_logs_url": upload_url(monitor),
        "orchestrate_logs_clients": upload_clients(hosts),
        "orchestrate_logs_max_size": str(parse_size(logs.max_size)),
        "orchestrate_logs_max_age": f"{int(parse_duration(logs.max_age))}s",
    }


def run_on_monitor(loaded: LoadedEnvironment, host: Host, argv: list[str], *, timeout: float,
                   input_text: str | None = None, ok_codes: tuple[int, ...] = (0,)) -> CommandResult:
    """Run `argv` on `host` as Ansible reaches it (the inventory's user and key, the environment's
    known_hosts, the address guard first); CommandError when it exits otherwise than `ok_codes`."""
    conn = connection(loaded)
    result = run_ssh(conn.target(host), remote_argv(argv), guard=conn.guard, timeout=timeout, input_text=input_text)
    if result.returncode not in ok_codes:
        raise CommandError(f"{host.name}: {' '.join(argv[:3])} exited with {result.returncode}"
                           + (f": {describe_failure(result)}" if result.returncode == SSH_FAILED else ""),
                           argv=list(argv), returncode=result.returncode,
                           output_tail=(result.stderr or result.stdout)[-2000:])
    return result


def _epoch(moment: datetime, *, up: bool = False) -> str:
    seconds = moment.timestamp()
    whole = int(seconds) + (1 if up and seconds != int(seconds) else 0)
    return f"@{whole}"


def journalctl_argv(host: str, *, since: datetime | None = None, until: datetime | None = None,
                    lines: int | None = None) -> list[str]:
    """The monitoring host's journalctl reading `host`'s central journal as JSON (pure)."""
    argv = ["journalctl", f"--file={journal_glob(host)}", "--output=json", f"--output-fields={','.join(FIELDS)}",
            "--no-pager", "--quiet"]
    if since is not None:
        argv.append(f"--since={_epoch(since)}")
    if until is not None:
        argv.append(f"--until={_epoch(until, up=True)}")
    if lines is not None and since is None:
        # with --since, journalctl's --lines counts from the start of the window; cut in parse instead
        argv.append(f"--lines={lines}")
    return argv


def _text(value: Any) -> str:
    """A journal field as text: the JSON export gives non-UTF-8 values as arrays of bytes."""
    if isinstance(value, list):
        return bytes(v for v in value if isinstance(v, int) and 0 <= v < 256).decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text.isdigit() else None


def parse_entries(text: str, host: str) -> list[LogLine]:
    """LogLines of journalctl's JSON output (one object a line), oldest first (pure)."""
    found = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        micros = _int(entry.get("__REALTIME_TIMESTAMP"))
        if micros is None:
            continue
        found.append(LogLine(
            time=datetime.fromtimestamp(micros / 1e6, UTC),
            host=host,
            message=_text(entry.get("MESSAGE")),
            unit=_text(entry.get("_SYSTEMD_UNIT")),
            identifier=_text(entry.get("SYSLOG_IDENTIFIER")) or _text(entry.get("_COMM")),
            pid=_int(entry.get("_PID")),
            priority=_int(entry.get("PRIORITY")),
        ))
    found.sort(key=lambda line: line.time)
    return found


class CentralLogs:
    """The central logs of one environment, read on its monitoring host over SSH."""

    def __init__(self, loaded: LoadedEnvironment, monitor: Host) -> None:
        self.loaded = loaded
        self.monitor = monitor

    @classmethod
    def of(cls, loaded: LoadedEnvironment) -> CentralLogs:
        """The central logs of `loaded`; UsageError when it has none (no monitoring host, or logs off)."""
        hosts = fleet_hosts(loaded)
        monitor = monitoring_host(hosts)
        if monitor is None:
            raise UsageError(f"{loaded.name} has no monitoring host: its logs stay on each host")
        if not (loaded.env.monitoring.enabled and loaded.env.monitoring.logs.enabled):
            raise UsageError(f"central logs are off in {loaded.name} (monitoring.logs.enabled)")
        return cls(loaded, monitor)

    @classmethod
    def available(cls, loaded: LoadedEnvironment) -> bool:
        """Whether `of` would succeed (the environment has central logs)."""
        return logs_enabled(loaded, fleet_hosts(loaded))

    def read(self, host: str, *, since: datetime | timedelta | None = None, until: datetime | None = None,
             lines: int | None = None, timeout: float = 60) -> list[LogLine]:
        """`host`'s lines from the monitoring host, oldest first: those since `since` (a moment, or a
        span back from now) up to `until`, the last `lines` of them. The host need not be up, nor
        still in the inventory. LogsError when the monitoring host cannot be read."""
        if isinstance(since, timedelta):
            since = datetime.now(UTC) - since
        argv = journalctl_argv(host, since=since, until=until, lines=lines)
        try:
            result = run_on_monitor(self.loaded, self.monitor, argv, timeout=timeout, ok_codes=(0, 1))
        except OrchestratorError as exc:
            raise LogsError(f"reading the central logs of {host} on {self.monitor.name} failed: {exc.message}",
                            hint=getattr(exc, "output_tail", None) or None) from exc
        if result.returncode != 0:
            if NO_FILES in result.stderr:
                return []  # nothing of that host has arrived (yet): no lines
            raise LogsError(f"journalctl on {self.monitor.name} exited with {result.returncode}: "
                            f"{result.stderr.strip()[:300]}")
        found = parse_entries(result.stdout, host)
        return found[-lines:] if lines is not None else found

    def read_until_caught_up(self, host: str, *, since: datetime, caught_up: datetime, wait: float = 5.0,
                             poll: float = 0.5) -> list[LogLine]:
        """Like `read`, waiting up to `wait` seconds for the upload to bring a line logged at or
        after `caught_up` (the host keeps logging; a host that went quiet returns what is there)."""
        deadline = time.monotonic() + wait
        while True:
            found = self.read(host, since=since)
            if (found and found[-1].time >= caught_up) or time.monotonic() >= deadline:
                return found
            time.sleep(poll)


def keep_gate_evidence(loaded: LoadedEnvironment, evidence_dir: Path, hosts: Sequence[str], *,
                       since: datetime, wait: float = 3.0) -> list[Path]:
    """Write the central lines of each failing host since `since` into
    `evidence_dir/<host>/central-journal.txt`; the paths written.

    The upload runs a moment behind the host: up to `wait` seconds in all are spent waiting for
    the lines of the last seconds. Best effort, never raising: without central logs nothing is
    written, and when the monitoring host cannot be read the file says why (the deploy's own
    outcome must not change).
    """
    if not hosts:
        return []
    try:
        central = CentralLogs.of(loaded)
    except OrchestratorError:
        return []
    written = []
    caught_up = datetime.now(UTC) - timedelta(seconds=2)
    deadline = time.monotonic() + wait
    for host in hosts:
        path = evidence_dir / host / EVIDENCE_FILE
        try:
            found = central.read_until_caught_up(host, since=since, caught_up=caught_up,
                                                 wait=max(0.0, deadline - time.monotonic()))
            body = "".join(line.format() + "\n" for line in found) or "(no lines)\n"
        except OrchestratorError as exc:
            body = f"(the central logs could not be read: {exc.message})\n"
        header = (f"# {host}'s journal since {since.isoformat(timespec='seconds')}, as the monitoring host "
                  f"{central.monitor.name} received it ({journal_glob(host)})\n")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header + body)
        except OSError:
            continue
        written.append(path)
    return written
