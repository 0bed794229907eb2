"""The Ansible inventory of an environment, built from the fleet's hosts.

The hosts come straight from `terraform output -json` (output `hosts`: a list of
{name, address, private_address, groups}), so remote backends and nested modules need no
inventory plugin. The same shape is produced by both fleet modules (local_fleet, aws_fleet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment, missing_subnet
from orchestrator.config.schema import TerraformLocal
from orchestrator.errors import UsageError
from orchestrator.files import atomic_write, dump_yaml, load_yaml

#: groups every inventory has, even when empty, so playbooks can target them unconditionally
STANDARD_GROUPS = ("app", "monitoring", "lb")


@dataclass(frozen=True)
class Host:
    """One host of a fleet as Terraform reports it."""

    name: str
    address: str
    groups: tuple[str, ...]
    private_address: str = ""
    host_key: str = ""
    """The host's SSH public key as its fleet module recorded it (cloud fleets); "" when the fleet
    writes known_hosts itself (local hosts)."""

    @classmethod
    def from_output(cls, item: Mapping[str, Any]) -> Host:
        return cls(
            name=str(item["name"]),
            address=str(item["address"]),
            groups=tuple(str(g) for g in item.get("groups", ())),
            private_address=str(item.get("private_address") or item["address"]),
            host_key=str(item.get("host_key") or ""),
        )


@dataclass(frozen=True)
class ConnectionSettings:
    """How Ansible reaches the hosts."""

    user: str
    private_key: Path
    known_hosts: Path | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)

    def ssh_common_args(self) -> str:
        args = ["-o IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            # Every host key is made by the controller and recorded in the environment's
            # known_hosts before the host first boots (local hosts: fleet.local; cloud hosts:
            # their cloud-init user data, fleet.cloudinit): a key that differs, or a host
            # missing from the file, is refused. Never trust on first use.
            args += [f"-o UserKnownHostsFile={self.known_hosts}", "-o StrictHostKeyChecking=yes"]
        return " ".join(args)


def build_inventory(env_name: str, hosts: Iterable[Host], connection: ConnectionSettings) -> dict[str, Any]:
    """Inventory as a YAML-ready mapping: groups app/monitoring/lb (+ any others), host vars."""
    children: dict[str, dict[str, Any]] = {group: {"hosts": {}} for group in STANDARD_GROUPS}
    for host in sorted(hosts, key=lambda h: h.name):
        host_vars = {"ansible_host": host.address, "private_address": host.private_address or host.address}
        for group in host.groups:
            children.setdefault(group, {"hosts": {}})["hosts"][host.name] = host_vars
    all_vars: dict[str, Any] = {
        "ansible_user": connection.user,
        "ansible_ssh_private_key_file": str(connection.private_key),
        "ansible_ssh_common_args": connection.ssh_common_args(),
        "ansible_python_interpreter": "/usr/bin/python3",
        "orchestrate_env": env_name,
        **dict(connection.extra_vars),
    }
    return {"all": {"vars": all_vars, "children": children}}


def known_hosts_text(hosts: Iterable[Host]) -> str:
    """known_hosts lines (`ADDRESS TYPE KEY`) of the hosts that carry a recorded key, by address."""
    lines = []
    for host in sorted(hosts, key=lambda h: h.address):
        fields = host.host_key.split()
        if len(fields) >= 2:
            lines.append(f"{host.address} {fields[0]} {fields[1]}\n")
    return "".join(lines)


def write_inventory(path: Path, inventory: Mapping[str, Any]) -> Path:
    """Write `inventory` as YAML atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "# Rendered by orchestrate from terraform outputs; do not edit.\n" + dump_yaml(dict(inventory)))
    return path


def hosts_from_inventory(inventory: Mapping[str, Any]) -> list[Host]:
    """Hosts of an inventory written by `build_inventory` (groups merged per host)."""
    found: dict[str, dict[str, Any]] = {}
    for group, body in (inventory.get("all", {}).get("children") or {}).items():
        for name, host_vars in ((body or {}).get("hosts") or {}).items():
            entry = found.setdefault(name, {"vars": host_vars or {}, "groups": []})
            entry["groups"].append(group)
    return [
        Host(name=name, address=str(e["vars"].get("ansible_host", "")), groups=tuple(e["groups"]),
             private_address=str(e["vars"].get("private_address", "")))
        for name, e in sorted(found.items())
    ]


def load_inventory(path: Path) -> dict[str, Any]:
    data = load_yaml(path.read_text()) if path.exists() else None
    return data if isinstance(data, dict) else {}


def allowed_networks(loaded: LoadedEnvironment) -> tuple[str, ...] | None:
    """The networks Ansible may connect to for `loaded`: a local fleet's own bridge subnet.

    Give it to every `tools.ansible.PlaybookRun(allowed_networks=...)`: the run is refused
    before it starts when a host of the inventory is elsewhere. None for cloud targets, whose
    addresses come from the cloud provider.
    """
    if isinstance(loaded.env.terraform, TerraformLocal):
        if not loaded.env.terraform.vars.subnet:
            raise missing_subnet(loaded)
        return (loaded.env.terraform.vars.subnet,)
    return None


def fleet_hosts(loaded: LoadedEnvironment) -> list[Host]:
    """Hosts of the environment's inventory, or [] before the fleet has been provisioned."""
    return hosts_from_inventory(load_inventory(loaded.paths.inventory))


def colour_halves(hosts: Iterable[Host]) -> tuple[list[Host], list[Host]]:
    """The app hosts split as the traffic strategies split them (pure): blue, the hosts at even
    positions in name order, and green, the odd ones (orchestrator.traffic.state.colors)."""
    ordered = sorted(hosts, key=lambda h: h.name)
    return ordered[0::2], ordered[1::2]


def app_hosts(loaded: LoadedEnvironment) -> list[Host]:
    """The app hosts of the environment's inventory, sorted by name (Ansible's order).

    UsageError, before anything is touched, when the environment has no inventory yet or no app host.
    """
    path = loaded.paths.inventory
    if not path.exists():
        raise UsageError(f"{loaded.name} has no inventory yet ({path}): run `orchestrate up {loaded.name}` first")
    hosts = [h for h in hosts_from_inventory(load_inventory(path)) if "app" in h.groups]
    if not hosts:
        raise UsageError(f"{path}: no hosts in group app")
    return hosts
