"""`orchestrate hosts ENV`: the hosts of an environment and whether they run."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.errors import UsageError
from orchestrator.hosts.local import HostStatus, fleet_for


def _table(env_name: str, hosts: list[HostStatus]) -> Table:
    table = Table(title=f"hosts of {env_name}", title_justify="left")
    for column in ("name", "address", "groups", "state"):
        table.add_column(column)
    colours = {"running": "green", "stopped": "yellow", "missing": "red"}
    for host in hosts:
        table.add_row(host.name, host.address, ",".join(host.groups),
                      f"[{colours[host.state]}]{host.state}[/{colours[host.state]}]")
    return table


@click.command("hosts")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> None:
    """List the hosts of ENV with address, groups and state (running, stopped, missing).

    For a local environment the planned hosts come from the environment file and their
    state from the machine; `orchestrate provision ENV` boots stopped or missing ones.
    """
    loaded = app.load(env_name)
    if loaded.env.target != "local":
        raise UsageError(
            f"`orchestrate hosts` is not available for target {loaded.env.target!r} environments yet "
            f"(only local); the hosts of {env_name} are in .orchestrate/{env_name}/inventory.yml after provision"
        )
    fleet, specs = fleet_for(loaded)
    hosts = fleet.status(specs)
    app.emit({"env": env_name, "hosts": [h.to_json() for h in hosts]},
             lambda: app.stdout_print(_table(env_name, hosts)))
