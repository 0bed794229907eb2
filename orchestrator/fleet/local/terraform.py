"""What the local_fleet Terraform module calls: one host as Terraform describes it, and the hosts of
an environment's outputs, booted again when their process died.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import HostError

if TYPE_CHECKING:
    from orchestrator.config.loader import LoadedEnvironment
from orchestrator.fleet.local.fleet import SSH_USER, HostSpec, LocalFleet, LocalHostState, plan_hosts
from orchestrator.fleet.local.network import FleetNetwork, ensure_network


@dataclass(frozen=True)
class TerraformHost:
    """The `input` of one terraform_data resource of terraform/modules/local_fleet (`ssh_user`
    absent from hosts made before it existed: root)."""

    name: str
    address: str
    groups: tuple[str, ...]
    bridge: str
    subnet: str
    state_dir: Path
    project_dir: Path
    ssh_user: str = SSH_USER

    @classmethod
    def from_json(cls, text: str) -> TerraformHost:
        """Parse the JSON the module passes on the command line."""
        try:
            data = json.loads(text)
            return cls(
                name=str(data["name"]),
                address=str(data["address"]),
                groups=tuple(str(g) for g in data.get("groups", ())),
                bridge=str(data["bridge"]),
                subnet=str(data["subnet"]),
                state_dir=Path(data["state_dir"]),
                project_dir=Path(data["project_dir"]),
                ssh_user=str(data.get("ssh_user") or SSH_USER),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise HostError(f"bad host description from terraform: {exc}: {text[:200]}") from None

    def fleet(self) -> LocalFleet:
        return LocalFleet(FleetNetwork(self.bridge, self.subnet), self.state_dir, self.project_dir,
                          login_user=self.ssh_user)

    def spec(self) -> HostSpec:
        return HostSpec(self.name, self.address, self.groups)


def _hosts_from_outputs(outputs: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(outputs, Mapping):
        hosts = outputs.get("hosts", outputs)
        if isinstance(hosts, Mapping) and "value" in hosts:
            hosts = hosts["value"]
        if not isinstance(hosts, Sequence):
            raise HostError("terraform outputs have no `hosts` list")
        return list(hosts)
    return list(outputs)


def fleet_for(loaded: LoadedEnvironment) -> tuple[LocalFleet, list[HostSpec]]:
    """The local fleet of an environment and its planned hosts (target local only).

    A subnet the env file leaves out is the one kept for the environment, or chosen now
    (`ensure_network`).
    """
    from orchestrator.config.schema import TerraformLocal

    loaded = ensure_network(loaded)
    terraform = loaded.env.terraform
    if not isinstance(terraform, TerraformLocal):
        raise HostError(f"environment {loaded.name} is not a local fleet (target {loaded.env.target})")
    v = terraform.vars
    network = FleetNetwork(v.bridge, v.subnet)
    fleet = LocalFleet(network, loaded.paths.hosts, loaded.project_dir, loaded.paths.known_hosts,
                       login_user=v.ssh_user)
    specs = plan_hosts(
        v.host_prefix, network, app_count=v.app_count, monitoring_count=v.monitoring_count, lb_count=v.lb_count
    )
    return fleet, specs


def ensure_fleet_from_outputs(
    loaded: LoadedEnvironment,
    outputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    timeout: float | None = None,
) -> list[LocalHostState]:
    """Bring every host in the terraform outputs up: the restore path of `orchestrate provision`.

    Terraform sees no change when a host's process died or the machine rebooted (its
    terraform_data resource is still in the state), so provision calls this after apply.
    `outputs` is `terraform output -json` (or its `hosts` value). Hosts already running are
    left alone; stopped ones boot again with their data; a container whose launcher died is
    adopted by a new one. Each status says which (`action`).
    """
    fleet, _ = fleet_for(loaded)
    specs = [
        HostSpec(str(h["name"]), fleet.network.assert_own_address(str(h["address"])),
                 tuple(str(g) for g in h.get("groups", ())))
        for h in _hosts_from_outputs(outputs)
    ]
    return fleet.ensure_all(specs, timeout=timeout)


def own_network(loaded: LoadedEnvironment) -> FleetNetwork:
    """The bridge and subnet of a local environment (for `assert_own_address`)."""
    return fleet_for(loaded)[0].network


def assert_own_address(loaded: LoadedEnvironment, address: str) -> str:
    """HostError unless `address` is a host address on `loaded`'s own bridge subnet."""
    return own_network(loaded).assert_own_address(address)
