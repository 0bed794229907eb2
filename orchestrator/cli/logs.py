"""`orchestrate logs ENV [HOST...]`: the hosts' journals merged by time, or followed until Ctrl-C."""

from __future__ import annotations

import json
import queue
import threading
import time

import click

from orchestrator.cli._common import AppContext, complete_host, env_argument, verb
from orchestrator.cli._hosts import host_styles, prefixed
from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import ExitStatus, OrchestratorError
from orchestrator.logs.entries import LogEntry, ReorderBuffer
from orchestrator.logs.query import LogQuery, check_unit, parse_since
from orchestrator.logs.service import LogsRequest, chosen_hosts, follow_logs, read_logs


class LogsIncomplete(OrchestratorError):
    """Some hosts' journals could not be read (the others were shown)."""


class _Printer:
    """One line per entry: `HOST  TIME  IDENT[PID]: MESSAGE` (host coloured on a terminal), or one
    JSON object per line under --json."""

    def __init__(self, app: AppContext, hosts: list[str]) -> None:
        self.app = app
        self.width = max((len(h) for h in hosts), default=0)
        self.styles = host_styles(hosts)

    def __call__(self, entry: LogEntry) -> None:
        if self.app.json_output:
            click.echo(json.dumps(entry.as_dict()))
            return
        stamp = entry.time.astimezone().strftime("%b %d %H:%M:%S.%f")[:-3]
        source = f"{entry.identifier or entry.unit or '?'}{f'[{entry.pid}]' if entry.pid else ''}: "
        self.app.stdout_print(prefixed(entry.host, self.width, f"{stamp} {source}{entry.message}",
                                       self.styles.get(entry.host)))


@click.command("logs")
@env_argument
@click.argument("hosts", nargs=-1, metavar="[HOST...]", shell_complete=complete_host)
@click.option("--group", type=click.Choice(["app", "lb", "monitoring"]), default=None,
              help="Every host of this group (default: the app hosts, when no HOST is named).")
@click.option("--since", metavar="WHEN", default=None,
              help="Entries from WHEN on: a duration back from now (10m, 1h30m), @EPOCH or an ISO time.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=None, metavar="N",
              help="The last N entries (default 100 without --since; 10 before following).")
@click.option("-f", "--follow", is_flag=True, help="Keep showing new entries until Ctrl-C (reconnects to a "
                                                    "host that rebooted).")
@click.option("--unit", metavar="NAME", default=None,
              help="This unit's journal (default: the service's on app hosts, the whole journal elsewhere).")
@click.option("--grep", metavar="RE", default=None, help="Only entries whose message matches RE (journalctl --grep).")
@verb
def command(app: AppContext, env_name: str, hosts: tuple[str, ...], group: str | None, since: str | None,
            lines: int | None, follow: bool, unit: str | None, grep: str | None) -> ExitStatus:
    """Show the journal of ENV's hosts (one SSH session per host), merged by time, each line
    prefixed with its host; --json gives one object per line (host, time, message, unit,
    priority, pid). Exit 0, or 1 naming the hosts whose journal could not be read."""
    query = LogQuery(unit=check_unit(unit) if unit else None, since=parse_since(since) if since else None,
                     lines=lines, grep=grep, follow=follow)
    loaded = app.load(env_name)
    request = LogsRequest(hosts=hosts, group=group, query=query)
    if follow:
        return _follow(app, loaded, request)
    result = read_logs(loaded, request)
    show = _Printer(app, result.hosts)
    for entry in result.entries:
        show(entry)
    if result.errors:
        raise LogsIncomplete("could not read the journal of " + "; ".join(
            f"{host}: {why}" for host, why in sorted(result.errors.items())))
    if not result.entries:
        app.info(f"no entries on {', '.join(result.hosts)}")
    return ExitStatus.OK


def _follow(app: AppContext, loaded: LoadedEnvironment, request: LogsRequest) -> ExitStatus:
    hosts = chosen_hosts(loaded, request)
    show = _Printer(app, [h.name for h in hosts])
    entries: queue.Queue[LogEntry] = queue.Queue()
    stop = threading.Event()
    buffer = ReorderBuffer()

    def notice(host: str, message: str) -> None:
        app.info(f"[yellow]{host}[/yellow]: {message}")

    worker = threading.Thread(target=follow_logs, args=(loaded, request, entries.put, notice, stop),
                              kwargs={"hosts": hosts}, daemon=True, name="logs-follow")
    app.info(f"following {', '.join(h.name for h in hosts)} (Ctrl-C to stop)")
    worker.start()
    ended_by_user = False
    try:
        while worker.is_alive() or not entries.empty():
            try:
                buffer.add(entries.get(timeout=0.1), time.monotonic())
                while True:  # take what else arrived meanwhile before showing anything
                    buffer.add(entries.get_nowait(), time.monotonic())
            except queue.Empty:
                pass
            for entry in buffer.release(time.monotonic()):
                show(entry)
    except (KeyboardInterrupt, BrokenPipeError):
        ended_by_user = True
    finally:
        stop.set()
        worker.join(timeout=10)
    try:
        for entry in buffer.release(time.monotonic(), everything=True):
            show(entry)
    except BrokenPipeError:
        pass
    # Ctrl-C is how a follow ends; every host refusing (nothing left to follow) is a failure
    return ExitStatus.OK if ended_by_user else ExitStatus.FAILED
