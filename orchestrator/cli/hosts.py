"""`orchestrate hosts ENV`: the hosts of an environment and whether they run."""

from __future__ import annotations

from typing import cast

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.fleet.local.fleet import HostLiveness, LocalHostState
from orchestrator.fleet.local.terraform import fleet_for


def _table(title: str, hosts: list[LocalHostState], *, launcher: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("name", "address", "groups", "state", *(("launcher",) if launcher else ())):
        table.add_column(column)
    colours = {"running": "green", "stopped": "yellow", "missing": "red", "alive": "green", "dead": "yellow"}
    for host in hosts:
        cells = [host.name, host.address, ",".join(host.groups),
                 f"[{colours[host.state]}]{host.state}[/{colours[host.state]}]"]
        if launcher:
            cells.append(f"[{colours[host.launcher]}]{host.launcher}[/]" if host.launcher else "-")
        table.add_row(*cells)
    return table


@click.command("hosts")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> None:
    """List the hosts of ENV with address, groups and state (running, stopped, missing).

    For a local environment the planned hosts come from the environment file and their
    state from the machine, with each running host's launcher: `alive`, or `dead` when the
    container runs and serves without it (a reboot would not bring it back);
    `orchestrate provision ENV` boots stopped or missing hosts and adopts such containers. For an
    aws environment the hosts are those of the inventory (Terraform's outputs) and their state
    is the EC2 instance's.
    The bridge and subnet are the env file's, or the defaults chosen for ENV.
    """
    loaded = app.load(env_name)
    if loaded.env.target != "local":
        hosts = _cloud_hosts(loaded)
        app.emit({"env": env_name, "hosts": [h.as_dict() for h in hosts]},
                 lambda: app.stdout_print(_table(f"hosts of {env_name} ({loaded.env.target})", hosts)))
        return
    fleet, specs = fleet_for(loaded)
    hosts = fleet.status(specs)
    bridge, subnet = fleet.network.bridge, fleet.network.subnet
    app.emit({"env": env_name, "bridge": bridge, "subnet": subnet, "hosts": [h.as_dict() for h in hosts]},
             lambda: app.stdout_print(_table(f"hosts of {env_name} (bridge {bridge}, {subnet})", hosts, launcher=True)))


def _cloud_hosts(loaded: LoadedEnvironment) -> list[LocalHostState]:
    """The hosts Terraform's outputs name (the inventory), with each instance's state from EC2 (rows
    shaped like a local host's, for one table)."""
    from orchestrator.fleet.aws import instance_states
    from orchestrator.fleet.inventory import hosts_from_inventory, load_inventory

    path = loaded.paths.inventory
    if not path.exists():
        raise UsageError(f"{loaded.name} has no inventory yet ({path}): run `orchestrate provision {loaded.name}`")
    states = instance_states(loaded)
    return [LocalHostState(name=h.name, address=h.address, groups=tuple(h.groups),
                       state=cast(HostLiveness, states.get(h.name, "missing")))
            for h in hosts_from_inventory(load_inventory(path))]
