"""`orchestrate status ENV`: release, previous release, unit state and health of each app host."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.errors import ExitStatus
from orchestrator.fleet.playbooks import unreachable_hint
from orchestrator.release.probe import fleet_status


@click.command("status")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> ExitStatus:
    """Show each app host's current and previous release, unit state and health.

    One SSH command and one health request per host, all hosts at once (no playbook).
    Exit 0 when every host is healthy, 1 otherwise (a host that does not answer SSH within the
    target's connect timeout, 2 s on a local fleet, is unreachable, and the message says what to run).
    """
    loaded = app.load(env_name)
    fleet = fleet_status(loaded)
    unreachable = [h.name for h in fleet.hosts if h.unit == "unreachable"]
    if unreachable:
        app.info(unreachable_hint(loaded, unreachable))

    def human() -> None:
        table = Table("host", "address", "release", "previous", "unit", "healthy", box=None)
        for host in fleet.hosts:
            healthy = "[green]yes[/green]" if host.healthy else "[red]no[/red]"
            table.add_row(host.name, host.address, host.release or "-", host.previous_release or "-",
                          host.unit, healthy)
        app.stdout_print(table)
        app.stdout_print(f"release: {fleet.release or 'mixed or none'} ({fleet.duration:.2f} s)")
        for host in fleet.hosts:
            if host.error:
                app.info(f"{host.name}: {host.error}")

    app.emit(fleet.as_dict(), human)
    return ExitStatus.OK if all(h.healthy for h in fleet.hosts) else ExitStatus.FAILED
