"""The address guard: the controller connects only to hosts the project created itself.

A local environment's hosts sit on the project's own bridge; every address that comes from an
inventory, a webhook or a host is checked against that bridge's subnet before anything connects
to it. Cloud environments take their addresses from the cloud provider's API.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.config.loader import LoadedEnvironment, missing_subnet
from orchestrator.config.schema import TerraformLocal
from orchestrator.fleet.local.network import FleetNetwork


def own_network(loaded: LoadedEnvironment) -> FleetNetwork | None:
    """The project's own bridge of a local environment; None for cloud targets.

    UsageError when the fleet has no subnet yet (never rendered or provisioned): there is no
    host of the project to connect to.
    """
    terraform = loaded.env.terraform
    if isinstance(terraform, TerraformLocal):
        if not terraform.vars.subnet:
            raise missing_subnet(loaded)
        return FleetNetwork(terraform.vars.bridge, terraform.vars.subnet)
    return None


def address_check(loaded: LoadedEnvironment) -> Callable[[str], str]:
    """A function that returns an address it was given when the controller may connect to it,
    and raises HostError otherwise (identity for cloud targets)."""
    network = own_network(loaded)
    if network is not None:
        return network.assert_own_address
    return lambda address: address
