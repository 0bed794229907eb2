"""The local fleet's network: the project's own bridge and subnet, chosen to avoid every route of
the machine and kept per environment, and the address guard that refuses anything outside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import TerraformLocal
from orchestrator.config.types import default_bridge_name
from orchestrator.errors import CommandError, HostError
from orchestrator.files import file_lock
from orchestrator.fleet.local.registry import LOCK_DIR, registry_entries
from orchestrator.paths import EnvPaths, state_root
from orchestrator.tools.process import run_command

FIRST_HOST_OFFSET = 10


INOTIFY_HOST_THRESHOLD = 15


INOTIFY_LIMITS = {"max_user_instances": 8192, "max_user_watches": 1048576}


INOTIFY_SYSCTL_DIR = Path("/proc/sys/fs/inotify")


#: one lock for every bridge change (rare and quick; no lock file per bridge piles up)
BRIDGES_LOCK = LOCK_DIR / "bridges.lock"


@dataclass(frozen=True)
class FleetNetwork:
    """The bridge a project owns and its subnet; the bridge holds the first usable address."""

    bridge: str
    subnet: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet, strict=True)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def host_address(self, index: int) -> str:
        """Address of the `index`-th host (0-based): `.10` upward."""
        address = self.network.network_address + FIRST_HOST_OFFSET + index
        if address >= self.network.broadcast_address:
            raise HostError(f"{self.subnet} has no room for host number {index + 1}")
        return str(address)

    def assert_own_address(self, address: str) -> str:
        """Return `address` if it is a host address inside this bridge's subnet; HostError otherwise.

        Every connection to a local host goes through this check first: traffic may only go
        to hosts the project created itself.
        """
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise HostError(f"{address!r} is not an IPv4 address") from None
        net = self.network
        if ip not in net or ip in (net.network_address, net.broadcast_address) or str(ip) == self.gateway:
            raise HostError(
                f"refusing {address}: not a host address on the project's own bridge {self.bridge} ({self.subnet})"
            )
        return address


def _ip(*args: str, check: bool = True) -> str:
    return run_command(["ip", *args], timeout=30, check=check).stdout


def bridge_exists(bridge: str) -> bool:
    """True when a link named `bridge` exists."""
    return run_command(["ip", "-o", "link", "show", "dev", bridge], timeout=30, check=False).returncode == 0


def parse_routes(text: str) -> list[tuple[ipaddress.IPv4Network, str]]:
    """(network, device) of each non-default route in `ip -4 -o route show` output."""
    routes = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] == "default" or "dev" not in parts[:-1]:
            continue
        try:
            routed = ipaddress.IPv4Network(parts[0], strict=False)
        except ValueError:
            continue
        routes.append((routed, parts[parts.index("dev") + 1]))
    return routes


def machine_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    """The machine's IPv4 routes (main table), as (network, device)."""
    return parse_routes(_ip("-4", "-o", "route", "show"))


def ensure_bridge(network: FleetNetwork) -> None:
    """Create the bridge with the subnet's first address (idempotent; refuses a subnet in use)."""
    with file_lock(BRIDGES_LOCK):
        cidr = f"{network.gateway}/{network.prefixlen}"
        if not bridge_exists(network.bridge):
            for routed, device in machine_routes():
                if routed.overlaps(network.network) and device != network.bridge:
                    raise HostError(f"subnet {network.subnet} overlaps {routed} already routed via {device}")
            _ip("link", "add", network.bridge, "type", "bridge")
        addresses = _ip("-4", "-o", "addr", "show", "dev", network.bridge)
        if f" {cidr} " not in addresses:
            _ip("addr", "add", cidr, "dev", network.bridge)
        _ip("link", "set", network.bridge, "up")


def delete_bridge_if_unused(bridge: str) -> bool:
    """Delete `bridge` when no registered host uses it; return whether it was deleted."""
    with file_lock(BRIDGES_LOCK):
        if any(entry.get("bridge") == bridge for entry in registry_entries()):
            return False
        if bridge_exists(bridge):
            _ip("link", "del", bridge)
            return True
    return False


def raise_inotify_limits(sysctl_dir: Path = INOTIFY_SYSCTL_DIR) -> dict[str, int]:
    """Raise the inotify sysctls (never lower them): many systemd instances need many watches.

    Returns the values written (empty when every limit was high enough already). A limit
    that cannot be read or written is left as it is: hosts still boot, only fewer of them.
    """
    raised = {}
    for name, wanted in INOTIFY_LIMITS.items():
        path = sysctl_dir / name
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text()) < wanted:
                path.write_text(str(wanted))
                raised[name] = wanted
    return raised


def raise_inotify_limits_for(host_count: int, sysctl_dir: Path = INOTIFY_SYSCTL_DIR) -> dict[str, int]:
    """`raise_inotify_limits` when `host_count` hosts (all fleets of the machine) need it, else nothing.

    Up to INOTIFY_HOST_THRESHOLD hosts boot within the kernel's default limits
    (docs/local-hosts.md); the machine's settings are not touched for them.
    """
    if host_count <= INOTIFY_HOST_THRESHOLD:
        return {}
    return raise_inotify_limits(sysctl_dir)


#: Where default subnets come from: one /24 per environment. Tests and benchmarks take theirs
#: from 10.214.0.0/16, so a fleet of the suite never takes an environment's default.
DEFAULT_SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")


DEFAULT_SUBNET_PREFIXLEN = 24


#: the chosen default subnet of an environment, under .orchestrate/ENV/ (EnvPaths.network)
NETWORK_FILE = "network.json"


def choose_subnet(
    seed: str,
    routes: Iterable[tuple[ipaddress.IPv4Network, str]],
    *,
    own_bridge: str,
    reserved: Iterable[ipaddress.IPv4Network] = (),
    pool: ipaddress.IPv4Network = DEFAULT_SUBNET_POOL,
    prefixlen: int = DEFAULT_SUBNET_PREFIXLEN,
) -> str:
    """A /24 of `pool` that overlaps no route of the machine (except on `own_bridge`) and nothing `reserved`.

    Deterministic: the search starts at an offset given by the sha256 of `seed` (the project
    dir and environment name) and walks the pool in order, wrapping around. A subnet already
    routed via `own_bridge` (the fleet runs, its record was lost) is kept.
    """
    routes = list(routes)
    candidates = list(pool.subnets(new_prefix=prefixlen))
    for routed, device in routes:
        if device == own_bridge and routed.prefixlen == prefixlen and routed.subnet_of(pool):
            return str(routed)
    taken = [routed for routed, device in routes if device != own_bridge] + list(reserved)
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(candidates)
    for index in range(len(candidates)):
        candidate = candidates[(start + index) % len(candidates)]
        if not any(candidate.overlaps(other) for other in taken):
            return str(candidate)
    raise HostError(f"no free /{prefixlen} left in {pool} for the bridge {own_bridge}: every one overlaps a route "
                    "of this machine or another fleet; set terraform.vars.subnet in the environment file")


def _subnet_of_file(path: Path, key: str = "subnet") -> ipaddress.IPv4Network | None:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return ipaddress.IPv4Network(str(json.loads(path.read_text())[key]))
    return None


def reserved_subnets(project_dir: Path, env_name: str) -> list[ipaddress.IPv4Network]:
    """Subnets other fleets own even while their bridges are down.

    The subnets of every host registered on this machine, and those the project's other
    environments name or were given (their env files and .orchestrate/*/network.json).
    """
    import yaml

    found: list[ipaddress.IPv4Network] = []
    for entry in registry_entries():
        if isinstance(entry.get("host_dir"), str):
            net = _subnet_of_file(Path(entry["host_dir"]) / "host.json")
            if net is not None:
                found.append(net)
    for env_file in sorted((project_dir / "inventories").glob("*/environment.yml")):
        if env_file.parent.name == env_name:
            continue
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
            declared = yaml.safe_load(env_file.read_text())["terraform"]["vars"].get("subnet")
            if declared:
                found.append(ipaddress.IPv4Network(str(declared)))
    for kept in sorted(state_root(project_dir).glob(f"*/{NETWORK_FILE}")):
        if kept.parent.name != env_name and (net := _subnet_of_file(kept)) is not None:
            found.append(net)
    return found


def resolve_network(project_dir: Path, env_name: str, *, host_prefix: str, bridge: str = "",
                    subnet: str = "") -> FleetNetwork:
    """The bridge and subnet of a local environment; values from its env file win.

    Without a bridge, it is `default_bridge_name(host_prefix)`. Without a subnet: the one
    kept in .orchestrate/ENV/network.json, else the one the env's existing hosts are on, else
    a new `choose_subnet` pick, which is written there so that every later render, `hosts`
    and deploy sees the same one.
    """
    bridge = bridge or default_bridge_name(host_prefix)
    if subnet:
        return FleetNetwork(bridge, subnet)
    paths = EnvPaths(project_dir, env_name)
    state_dir = paths.root
    kept = _subnet_of_file(paths.network)
    if kept is None:
        kept = next((net for record in sorted((state_dir / "hosts").glob("*/host.json"))
                     if (net := _subnet_of_file(record)) is not None), None)
    if kept is not None:
        return FleetNetwork(bridge, str(kept))
    try:
        routes = machine_routes()
    except CommandError:
        routes = []  # no `ip` here: ensure_bridge checks the routes again before creating the bridge
    chosen = choose_subnet(f"{project_dir.resolve()}:{env_name}", routes, own_bridge=bridge,
                           reserved=reserved_subnets(project_dir, env_name))
    with contextlib.suppress(OSError):  # a read-only checkout still loads; it chooses again next time
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{NETWORK_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps({"subnet": chosen, "bridge": bridge,
                                   "note": "default subnet chosen by orchestrate; "
                                           "set terraform.vars.subnet to change it"}, indent=2) + "\n")
        tmp.replace(paths.network)
    return FleetNetwork(bridge, chosen)


def ensure_network(loaded: LoadedEnvironment) -> LoadedEnvironment:
    """`loaded` with its local fleet's bridge and subnet filled in (`resolve_network`).

    Where the fleet is rendered, provisioned or booted: a subnet the env file leaves out is
    chosen here (reading the machine's routes) and kept in .orchestrate/ENV/network.json, which
    every later load reads. Callers go on with the environment this returns. Cloud
    environments and local ones with both values come back unchanged.
    """
    terraform = loaded.env.terraform
    if not isinstance(terraform, TerraformLocal) or (terraform.vars.bridge and terraform.vars.subnet):
        return loaded
    v = terraform.vars
    network = resolve_network(loaded.project_dir, loaded.name, host_prefix=v.host_prefix, bridge=v.bridge,
                              subnet=v.subnet)
    return loaded.with_local_network(network.bridge, network.subnet)
