"""What the release verbs (deploy, rollback, up, traffic, backup, restore) share: progress lines,
the release service wired to the terminal, and the tables of a release's outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.table import Table

from orchestrator.cli._common import AppContext
from orchestrator.cli._progress import GateProgress, HostProgress
from orchestrator.config.loader import LoadedEnvironment
from orchestrator.release.results import ReleaseRun
from orchestrator.release.service import ReleaseOutcome, ReleaseService

if TYPE_CHECKING:  # types only: a rollback or status never loads the deploy check or the traffic gates
    from orchestrator.release.check import DeployCheck
    from orchestrator.release.traffic import TrafficRelease
    from orchestrator.tools.ansible import HostEvent
    from orchestrator.traffic.gates import GateDecision


def progress(app: AppContext, title: str = "deploy",
             hosts: list[str] | None = None) -> Callable[[HostEvent], None] | None:
    """Live per-host progress on stderr (cli/_progress.py); nothing under --json."""
    if app.json_output:
        return None
    return HostProgress(app, title, hosts)


def gate_line(app: AppContext, loaded: LoadedEnvironment | None = None) -> Callable[[GateDecision], None]:
    """The traffic gates' decisions on stderr, with the weight the new colour has."""
    return GateProgress(app, loaded.env.rollout.traffic_steps if loaded is not None else [])


def release_service(app: AppContext, loaded: LoadedEnvironment) -> ReleaseService:
    """The release service of `loaded`, reporting to this terminal; its outcome tables are shown
    also when a release fails (the verb boundary renders the error's result)."""
    events = progress(app, "release", _app_host_names(loaded))
    app.result_renderer = lambda result: render_outcome(app, result) if isinstance(result, ReleaseOutcome) else None
    return ReleaseService(loaded, info=app.info, on_event=events,
                          on_output=(lambda line: app.info(f"  [dim]{line}[/dim]")) if events else None,
                          on_decision=gate_line(app, loaded))


def _app_host_names(loaded: LoadedEnvironment) -> list[str] | None:
    from orchestrator.fleet.inventory import fleet_hosts

    names = [h.name for h in fleet_hosts(loaded) if "app" in h.groups]
    return names or None


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


def render_check(app: AppContext, check: DeployCheck) -> None:
    """`deploy --check`: per host what would change (release before -> after, unit, env file keys,
    hooks, other tasks)."""
    table = Table("host", "release", "unit", "env file", "hooks", "other", box=None)
    for host in check.hosts:
        release = (f"{host.release_before or '-'} -> {host.release_after or '-'}" if host.release_changes
                   else f"{host.release_after or '-'} (unchanged)")
        env = ("-" if not host.env_changed else ", ".join(host.env_keys) if host.env_keys
               else "changes (names not reported)")
        other = "; ".join(host.other) or "-"
        if host.error:
            other = f"[red]{host.error}[/red]"
        table.add_row(host.name, release, "changes" if host.unit_changed else "-", env,
                      ", ".join(host.hooks) or "-", other)
    app.stdout_print(table)
    for note in check.notes:
        app.info(f"note: {note}")
    changing = [h.name for h in check.hosts if h.changes]
    app.stdout_print(f"check {check.release}: " + (f"{len(changing)} of {len(check.hosts)} hosts would change"
                                                   if changing else "nothing would change"))


def render_outcome(app: AppContext, outcome: ReleaseOutcome) -> None:
    """Whatever ran: the check, the traffic release, the host-level run, or the one line `up` recorded."""
    if outcome.check is not None:
        render_check(app, outcome.check)
    elif outcome.traffic is not None:
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
        if app.quiet or (event.status == "skipped" and not app.verbose):
            return
        detail = f": {event.message}" if event.message else ""
        app.stderr.print(f"  {event.host}: {event.status:<11} {event.task}{detail}", markup=False)

    return sink
