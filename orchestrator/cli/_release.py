"""What the release verbs (deploy, rollback, up, traffic, backup, restore) share: progress lines,
the release service wired to the terminal, and the tables of a release's outcome."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.table import Table

from orchestrator.cli._common import AppContext
from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.release.results import ReleaseRun
from orchestrator.release.service import ReleaseOutcome, ReleaseService
from orchestrator.release.traffic import TrafficRelease
from orchestrator.tools.ansible import HostEvent
from orchestrator.traffic.gates import GateDecision

_STYLE = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red"}


def progress(app: AppContext) -> Callable[[HostEvent], None] | None:
    """A live per-host line for every task outcome on stderr; nothing under --json."""
    if app.json_output:
        return None

    def show(event: HostEvent) -> None:
        if event.status == "skipped":
            return
        style = _STYLE.get(event.status, "white")
        detail = f" [dim]{event.message}[/dim]" if event.message else ""
        app.stderr.print(f"  {event.host:<14} [{style}]{event.status:<11}[/{style}] {event.task}{detail}")

    return show


def gate_line(app: AppContext) -> Callable[[GateDecision], None]:
    """One stderr line per traffic gate decision."""

    def show(decision: GateDecision) -> None:
        app.info(f"  gate at {decision.step}%: {'go' if decision.go else 'roll back'} ({decision.requests} "
                 f"requests, {decision.failed} failed, {decision.reason}; {decision.source})")

    return show


def release_service(app: AppContext, loaded: LoadedEnvironment) -> ReleaseService:
    """The release service of `loaded`, reporting to this terminal; its outcome tables are shown
    also when a release fails (the verb boundary renders the error's result)."""
    events = progress(app)
    app.result_renderer = lambda result: render_outcome(app, result) if isinstance(result, ReleaseOutcome) else None
    return ReleaseService(loaded, info=app.info, on_event=events,
                          on_output=(lambda line: app.info(f"  [dim]{line}[/dim]")) if events else None,
                          on_decision=gate_line(app))


def confirm_protected(app: AppContext, loaded: LoadedEnvironment, yes: bool, what: str) -> None:
    """A protected environment needs --yes without a terminal, or a confirmation with one."""
    if not loaded.env.protected or yes:
        return
    if not app.interactive:
        raise UsageError(f"{loaded.name} is protected: pass --yes to {what} without a terminal")
    click.confirm(f"{what.capitalize()} in protected environment {loaded.name}?", abort=True, err=True)


def render_run(app: AppContext, run: ReleaseRun) -> None:
    """Table of hosts (release before -> after) and the run summary, on stdout."""
    table = Table("host", "address", "before", "after", "switched", "healthy", box=None)
    for host in run.hosts:
        healthy = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[host.healthy]
        table.add_row(host.name, host.address, host.release_before or "-", host.release or "-",
                      "yes" if host.switched else "no", healthy)
    app.stdout_print(table)
    app.stdout_print(f"{run.action} {run.state}: {run.target or '-'}, {run.changed} changed, "
                     f"run {run.run_id} ({run.run.duration:.1f} s)")
    if run.restored_hosts:
        app.stdout_print("restored: " + ", ".join(f"{h} -> {r}" for h, r in sorted(run.restored_hosts.items())))


def render_traffic(app: AppContext, result: TrafficRelease) -> None:
    """The gate decisions of a traffic release and where the traffic is now."""
    table = Table("step %", "go", "requests", "failed", "error ratio", "latency ms", "reason", box=None)
    for d in result.decisions:
        table.add_row(str(d.step), "yes" if d.go else "[red]no[/red]", str(d.requests), str(d.failed),
                      f"{d.error_ratio:.3f}", f"{d.latency_ms:.0f}", d.reason)
    if result.decisions:
        app.stdout_print(table)
    app.stdout_print(f"{result.strategy} {result.state}: traffic on {result.active} "
                     f"({result.release or '-'}), switch {result.switch_seconds:.3f} s")


def render_outcome(app: AppContext, outcome: ReleaseOutcome) -> None:
    """Whatever ran: the traffic release, the host-level run, or the one line `up` recorded."""
    if outcome.traffic is not None:
        render_traffic(app, outcome.traffic)
    elif outcome.hosts is not None:
        render_run(app, outcome.hosts)
    else:
        app.stdout_print(f"{outcome.action} {outcome.state}: {outcome.release or '-'}")

def human_size(size: int) -> str:
    """`size` bytes as a short human figure (B, KiB, MiB, GiB)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def progress_sink(app: AppContext) -> Callable[[HostEvent], None]:
    """Each host's task outcomes on stderr, as they happen (skipped tasks are not news)."""

    def sink(event: HostEvent) -> None:
        if event.status == "skipped":
            return
        detail = f": {event.message}" if event.message else ""
        app.stderr.print(f"  {event.host}: {event.status:<11} {event.task}{detail}", markup=False)

    return sink
