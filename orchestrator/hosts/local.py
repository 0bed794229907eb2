"""The embedded local fleet: systemd-nspawn hosts booting a cached Debian bookworm image.

One image serves every project: a debootstrap rootfs built from `RECIPE`, packed once into a
cached tarball (`/var/cache/orchestrate/images/<recipe-hash>.tar` with a sha256 sidecar written
last) and unpacked once to `/var/lib/orchestrate/images/<hash>/rootfs`. A host is an overlay
mount of that rootfs with its own upper dir under the environment's state dir
(`.orchestrate/<env>/hosts/<name>/`), which holds everything host-specific: hostname, static
address, SSH host key, the project's public key. The host runs as

    systemd-nspawn -D MERGED --boot --machine=NAME --network-bridge=BRIDGE
                   --register=no --keep-unit --console=passive

under a small supervisor process (`python -m orchestrator.hosts.supervisor HOST_DIR`) that lives
in the host's own cgroup and relaunches the container when it exits with 133 (reboot).

Hosts reach nothing but their own bridge: the bridge has the first address of the subnet, hosts
get `.10` upward, and there is no NAT. Code that connects to a host first calls
`assert_own_address`, which refuses any address outside the project's bridge subnet.

This module never prints; failures raise HostError.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator import paths
from orchestrator.errors import CommandError, HostError
from orchestrator.files import file_lock, sha256_file
from orchestrator.hosts.supervisor import STOP_REQUESTED, cgroup_dirs
from orchestrator.paths import EnvPaths, state_root
from orchestrator.tools.process import run_command, start_detached, tail

if TYPE_CHECKING:
    from orchestrator.config import LoadedEnvironment

HostState = Literal["running", "stopped", "missing"]

#: Packages of the host image, in addition to debootstrap's minbase. Later parts add theirs
#: here; the recipe hash (and so the cache key) follows the list.
RECIPE: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "sudo",
    "ca-certificates",
    "curl",
    "prometheus",
    "prometheus-alertmanager",
    # debootstrap skips Recommends; the monitoring rules tell "host down" from "service down"
    # by the node exporter on every host.
    "prometheus-node-exporter",
    "haproxy",
)

SUITE = "bookworm"
VARIANT = "minbase"
#: Bump when `prepare_rootfs` changes what it writes: it keys the cache like the package list.
PREP_VERSION = 4

#: Units that slow a container's boot or make no sense in one.
MASKED_UNITS: tuple[str, ...] = (
    "systemd-networkd-wait-online.service",
    "getty.target",
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-pstore.service",
    "systemd-network-generator.service",
    "systemd-remount-fs.service",
    "dev-hugepages.mount",
    # Boot CPU is what limits twenty hosts on two cores. Nothing here needs login sessions
    # (pam_systemd is optional and fails fast without logind), a persistent journal, utmp
    # records or sysusers (the image's users exist already).
    "systemd-logind.service",
    "systemd-journal-flush.service",
    "systemd-sysusers.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
)

#: Generators with nothing to find in a container (disks, kernel command line, consoles):
#: each is an exec on every boot.
MASKED_GENERATORS: tuple[str, ...] = (
    "systemd-cryptsetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
    "systemd-getty-generator",
    "systemd-debug-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-rc-local-generator",
)

#: Services installed by the recipe that start only when a role enables them.
DISABLED_UNITS: tuple[str, ...] = (
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-node-exporter.service",
    "haproxy.service",
)

SSH_USER = "root"
FIRST_HOST_OFFSET = 10
INOTIFY_HOST_THRESHOLD = 15
INOTIFY_LIMITS = {"max_user_instances": 8192, "max_user_watches": 1048576}
INOTIFY_SYSCTL_DIR = Path("/proc/sys/fs/inotify")

DEFAULT_CACHE_DIR = Path("/var/cache/orchestrate/images")
DEFAULT_IMAGE_ROOT = Path("/var/lib/orchestrate/images")
#: Machine-wide registry of hosts (name -> bridge, host dir): host names and bridges are
#: global on the machine, so two fleets may not share a name, and a bridge is deleted when
#: no registered host uses it any more.
REGISTRY_DIR = Path("/var/lib/orchestrate/hosts")
LOCK_DIR = Path("/var/lib/orchestrate/locks")
#: one lock for every bridge change (rare and quick; no lock file per bridge piles up)
BRIDGES_LOCK = LOCK_DIR / "bridges.lock"

SOURCES_FILE = Path("/etc/apt/sources.list.d/debian.sources")
SOURCES_LIST = Path("/etc/apt/sources.list")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

#: hosts started at once by ensure_all (starting is mostly waiting on mount, fork and exec)
START_WORKERS = 4
READY_POLL = 0.05
NSPAWN_PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
_HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

SSHD_DROPIN = """\
# Installed by orchestrate: key-only root login for the controller, one host key per host.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
"""

HOSTKEY_UNIT = """\
[Unit]
Description=Generate SSH host keys missing from this host
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""


# --- image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecipe:
    """What the host image is made of; its hash names the cached tarball."""

    packages: tuple[str, ...] = RECIPE
    suite: str = SUITE
    variant: str = VARIANT
    prep_version: int = PREP_VERSION

    @property
    def hash(self) -> str:
        """16 hex of the sha256 of the recipe (package order does not matter)."""
        canonical = json.dumps(
            {
                "packages": sorted(set(self.packages)),
                "suite": self.suite,
                "variant": self.variant,
                "prep": self.prep_version,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def mirror_from_sources(text: str, suite: str = SUITE) -> str | None:
    """First URI of a deb822 `.sources` stanza that carries `suite` (not its -security/-updates)."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.lstrip().startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if suite in fields.get("suites", "").split() and fields.get("uris"):
            return fields["uris"].split()[0]
    return None


def mirror_from_list(text: str, suite: str = SUITE) -> str | None:
    """First URI of a one-line `deb URI SUITE ...` entry in a sources.list."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            rest = [p for p in parts[1:] if not p.startswith("[")]
            if len(rest) >= 2 and rest[1] == suite:
                return rest[0]
    return None


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the only network the image build needs)."""
    for path, parse in ((SOURCES_FILE, mirror_from_sources), (SOURCES_LIST, mirror_from_list)):
        if path.exists():
            found = parse(path.read_text())
            if found:
                return found
    return DEFAULT_MIRROR


def debootstrap_argv(recipe: ImageRecipe, target: Path, mirror: str) -> list[str]:
    """argv of the debootstrap run that builds the image's rootfs."""
    return [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        recipe.suite,
        str(target),
        mirror,
    ]



@dataclass(frozen=True)
class ImageStore:
    """Where images are cached (tarballs) and unpacked (rootfs dirs)."""

    cache_dir: Path = DEFAULT_CACHE_DIR
    root_dir: Path = DEFAULT_IMAGE_ROOT

    def tarball(self, recipe: ImageRecipe) -> Path:
        return self.cache_dir / f"{recipe.hash}.tar"

    def sidecar(self, recipe: ImageRecipe) -> Path:
        return self.cache_dir / f"{recipe.hash}.tar.sha256"

    def rootfs(self, recipe: ImageRecipe) -> Path:
        return self.root_dir / recipe.hash / "rootfs"

    def marker(self, recipe: ImageRecipe) -> Path:
        return self.root_dir / recipe.hash / "complete"

    def lock_path(self, recipe: ImageRecipe) -> Path:
        return self.root_dir / f"{recipe.hash}.lock"

    def cache_valid(self, recipe: ImageRecipe) -> bool:
        """True when the tarball exists and matches the sha256 sidecar (written last)."""
        tarball, sidecar = self.tarball(recipe), self.sidecar(recipe)
        if not tarball.is_file() or not sidecar.is_file():
            return False
        recorded = sidecar.read_text().split()
        return bool(recorded) and recorded[0] == sha256_file(tarball)

    def unpacked(self, recipe: ImageRecipe) -> bool:
        return self.marker(recipe).is_file() and self.rootfs(recipe).is_dir()

    def ensure(self, recipe: ImageRecipe | None = None, *, mirror: str | None = None) -> Path:
        """The unpacked rootfs of `recipe`, building and caching it first when needed.

        Safe to call from several processes at once: building and unpacking happen under an
        exclusive lock, and a cache whose tarball does not match its sidecar is rebuilt.
        """
        recipe = recipe or ImageRecipe()
        if self.unpacked(recipe):
            return self.rootfs(recipe)
        with file_lock(self.lock_path(recipe)):
            if self.unpacked(recipe):
                return self.rootfs(recipe)
            if not self.cache_valid(recipe):
                self._build(recipe, mirror or debian_mirror())
            self._unpack(recipe)
        return self.rootfs(recipe)

    def _build(self, recipe: ImageRecipe, mirror: str) -> None:
        build_dir = self.root_dir / recipe.hash / "build"
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        try:
            run_command(debootstrap_argv(recipe, build_dir, mirror), timeout=1800)
            prepare_rootfs(build_dir)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tarball, sidecar = self.tarball(recipe), self.sidecar(recipe)
            sidecar.unlink(missing_ok=True)
            partial = tarball.with_suffix(".tar.partial")
            run_command(
                ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", build_dir, "-cf", partial, "."],
                timeout=600,
            )
            partial.replace(tarball)
            # The sidecar is written last: a tarball without a matching sidecar is never trusted.
            sidecar.write_text(f"{sha256_file(tarball)}  {tarball.name}\n")
        except CommandError as exc:
            raise HostError(f"building the host image failed: {exc.message}\n{exc.output_tail}") from exc
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)

    def _unpack(self, recipe: ImageRecipe) -> None:
        rootfs, marker = self.rootfs(recipe), self.marker(recipe)
        marker.unlink(missing_ok=True)
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        try:
            run_command(
                ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", rootfs, "-xpf",
                 self.tarball(recipe)],
                timeout=600,
            )
        except CommandError as exc:
            raise HostError(f"unpacking the host image failed: {exc.message}\n{exc.output_tail}") from exc
        marker.write_text(f"{recipe.hash}\n")


def prepare_rootfs(root: Path) -> None:
    """Make a fresh debootstrap rootfs boot fast and stay quiet as an nspawn host."""
    systemctl = ["systemctl", f"--root={root}", "--quiet"]
    run_command([*systemctl, "enable", "systemd-networkd.service"])
    run_command([*systemctl, "mask", *MASKED_UNITS])
    generators = root / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for name in MASKED_GENERATORS:
        (generators / name).unlink(missing_ok=True)
        (generators / name).symlink_to("/dev/null")  # the documented way to mask a generator
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    present = [u for u in DISABLED_UNITS if (root / "lib/systemd/system" / u).exists()]
    if present:
        run_command([*systemctl, "disable", *present])
    sshd_dir = root / "etc/ssh/sshd_config.d"
    sshd_dir.mkdir(parents=True, exist_ok=True)
    (sshd_dir / "orchestrate.conf").write_text(SSHD_DROPIN)
    # Host keys are per host: written into each host's upper dir before its first boot,
    # with this unit as the fallback for a host whose upper dir lacks them.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/systemd/system/orchestrate-ssh-hostkeys.service").write_text(HOSTKEY_UNIT)
    # `sshd -t` before every start doubles sshd's start-up cost; reload still tests the config.
    ssh_dropin = root / "etc/systemd/system/ssh.service.d"
    ssh_dropin.mkdir(parents=True, exist_ok=True)
    (ssh_dropin / "orchestrate.conf").write_text("[Service]\nExecStartPre=\n")
    run_command([*systemctl, "enable", "orchestrate-ssh-hostkeys.service"])
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").unlink(missing_ok=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


# --- network -----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class HostSpec:
    """One host of a local fleet."""

    name: str
    address: str
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _HOST_NAME_RE.match(self.name):
            raise HostError(f"{self.name!r} is not a host name (lowercase letters, digits, '-')")


def plan_hosts(
    host_prefix: str,
    network: FleetNetwork,
    *,
    app_count: int,
    monitoring_count: int = 0,
    lb_count: int = 0,
) -> list[HostSpec]:
    """The hosts of a fleet in their fixed order: `P-app-1..N`, then `P-mon-1`, then `P-lb-1`.

    The same order and addresses are computed by terraform/modules/local_fleet.
    """
    names: list[tuple[str, str]] = [(f"{host_prefix}-app-{i}", "app") for i in range(1, app_count + 1)]
    names += [(f"{host_prefix}-mon-{i}", "monitoring") for i in range(1, monitoring_count + 1)]
    names += [(f"{host_prefix}-lb-{i}", "lb") for i in range(1, lb_count + 1)]
    return [
        HostSpec(name=name, address=network.host_address(index), groups=(group,))
        for index, (name, group) in enumerate(names)
    ]


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

    Up to INOTIFY_HOST_THRESHOLD hosts boot within the kernel's default limits (DESIGN.md,
    "Local hosts"); the machine's settings are not touched for them.
    """
    if host_count <= INOTIFY_HOST_THRESHOLD:
        return {}
    return raise_inotify_limits(sysctl_dir)


# --- per-environment bridge and subnet defaults ------------------------------------------

#: Where default subnets come from: one /24 per environment. Tests and benchmarks take theirs
#: from 10.214.0.0/16, so a fleet of the suite never takes an environment's default.
DEFAULT_SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")
DEFAULT_SUBNET_PREFIXLEN = 24
#: the chosen default subnet of an environment, under .orchestrate/ENV/
NETWORK_FILE = "network.json"
_BRIDGE_NAME_MAX = 15  # IFNAMSIZ - 1


def default_bridge_name(host_prefix: str) -> str:
    """The bridge of a fleet whose env file names none: `orch-PREFIX`, or a hashed short form.

    Host prefixes are unique per machine (host names are), and so are these names: a prefix
    too long for the 15 characters of an interface name keeps its start and gets 5 hex of
    its sha256 (`or-PREFIX6-xxxxx`).
    """
    name = f"orch-{host_prefix}"
    if len(name) <= _BRIDGE_NAME_MAX:
        return name
    digest = hashlib.sha256(host_prefix.encode()).hexdigest()[:5]
    return f"or-{host_prefix[:6]}-{digest}"


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
    state_dir = EnvPaths(project_dir, env_name).root
    kept = _subnet_of_file(state_dir / NETWORK_FILE)
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
        tmp.replace(state_dir / NETWORK_FILE)
    return FleetNetwork(bridge, chosen)


# --- registry ----------------------------------------------------------------------------


def registry_entries(registry_dir: Path = REGISTRY_DIR) -> list[dict[str, Any]]:
    """Every host registered on this machine (name, bridge, host_dir)."""
    entries = []
    if registry_dir.is_dir():
        for path in sorted(registry_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                entries.append(json.loads(path.read_text()))
    return entries


def _register(name: str, bridge: str, host_dir: Path) -> None:
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    path = REGISTRY_DIR / f"{name}.json"
    with file_lock(LOCK_DIR / "registry.lock"):
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                existing = json.loads(path.read_text())
                if existing.get("host_dir") != str(host_dir) and Path(existing.get("host_dir", "")).is_dir():
                    raise HostError(
                        f"host name {name} is already used by another fleet ({existing['host_dir']}); "
                        "choose another host_prefix"
                    )
        path.write_text(json.dumps({"name": name, "bridge": bridge, "host_dir": str(host_dir)}) + "\n")


def _unregister(name: str) -> None:
    with file_lock(LOCK_DIR / "registry.lock"):
        (REGISTRY_DIR / f"{name}.json").unlink(missing_ok=True)


def collect_garbage() -> list[str]:
    """Remove hosts whose host dir is gone (their project was deleted under them).

    Their processes are killed, their overlay unmounted (found by its upperdir, wherever the
    mount point was moved), cgroups and registry entries dropped, and bridges no host uses
    any more deleted. Hosts whose dir exists are never touched. Returns the removed names.
    """
    removed = []
    for entry in registry_entries():
        name, host_dir = entry.get("name"), entry.get("host_dir")
        if not isinstance(name, str) or not isinstance(host_dir, str) or Path(host_dir).is_dir():
            continue
        _kill_cgroup(name)
        for mountpoint in _overlay_mounts_with_upper(Path(host_dir) / "upper"):
            if run_command(["umount", mountpoint], timeout=30, check=False).returncode != 0:
                run_command(["umount", "-l", mountpoint], timeout=30, check=False)
        _remove_cgroups(name)
        shutil.rmtree(NSPAWN_PROPAGATE_DIR / name, ignore_errors=True)
        _unregister(name)
        removed.append(name)
        if isinstance(entry.get("bridge"), str):
            delete_bridge_if_unused(entry["bridge"])
    return removed


def prune_images(store: ImageStore | None = None, keep: ImageRecipe | None = None) -> list[str]:
    """Remove cached and unpacked images other than `keep`'s that no registered host uses.

    A host's image is its overlay's lowerdir: images referenced by a registered host's record
    or by a mounted overlay stay. Returns the removed image hashes.
    """
    store = store or ImageStore()
    keep_hash = (keep or ImageRecipe()).hash
    in_use = {keep_hash}
    for entry in registry_entries():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            lowerdir = json.loads((Path(entry["host_dir"]) / "host.json").read_text())["lowerdir"]
            in_use.add(Path(lowerdir).parent.name)
    with open("/proc/mounts") as mounts:
        for match in re.finditer(r"lowerdir=([^,\s]+)", mounts.read()):
            in_use.add(Path(match.group(1)).parent.name)
    candidates = {p.name for p in store.root_dir.iterdir() if p.is_dir()} if store.root_dir.is_dir() else set()
    if store.cache_dir.is_dir():
        candidates |= {p.name.split(".")[0] for p in store.cache_dir.glob("*.tar*")}
    removed = []
    for digest in sorted(candidates - in_use):
        recipe_lock = store.root_dir / f"{digest}.lock"
        with file_lock(recipe_lock):
            shutil.rmtree(store.root_dir / digest, ignore_errors=True)
            for path in store.cache_dir.glob(f"{digest}.tar*"):
                path.unlink(missing_ok=True)
        recipe_lock.unlink(missing_ok=True)
        removed.append(digest)
    return removed


# --- processes and cgroups ---------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True for a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cgroup_pids(name: str) -> list[int]:
    """Every process in the host's cgroup tree (name=systemd hierarchy, all nested groups)."""
    pids: set[int] = set()
    for directory in _cgroup_tree(cgroup_dirs(name)[0]):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    return sorted(pids)


def _cgroup_tree(root: Path) -> list[Path]:
    """`root` and every cgroup below it, deepest first.

    os.walk, not Path.rglob: groups vanish while we look (systemd in a stopping host removes
    its own), and os.walk skips what disappeared instead of raising.
    """
    found = [Path(dirpath) for dirpath, _, _ in os.walk(root)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def container_leader(name: str) -> int | None:
    """Host pid of the container's PID 1 (the process that is pid 1 in its own namespace)."""
    for pid in cgroup_pids(name):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) > 1 and ids[-1] == "1":
                    return pid
    return None


def _kill_cgroup(name: str, timeout: float = 10.0) -> None:
    # cgroup.kill (cgroup v2, Linux >= 5.14) kills the whole tree at once, with no race
    # against processes forking meanwhile; the pid loop below is the fallback and the check.
    for directory in cgroup_dirs(name):
        with contextlib.suppress(OSError):
            (directory / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout
    while pids := cgroup_pids(name):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HostError(f"{name}: processes {pids} survive SIGKILL")
        time.sleep(0.05)


def _remove_cgroups(name: str) -> None:
    for directory in cgroup_dirs(name):
        # Only directories can be removed from cgroupfs (their files go with them), deepest first.
        for sub in _cgroup_tree(directory):
            with contextlib.suppress(OSError):
                sub.rmdir()


def _overlay_mounts_with_upper(upper: Path) -> list[str]:
    """Mount points of overlays whose upperdir is `upper`."""
    found = []
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 3 and fields[2] == "overlay" and f"upperdir={upper}," in fields[3] + ",":
                found.append(fields[1].replace("\\040", " "))
    return found


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


# --- ssh ---------------------------------------------------------------------------------


def ssh_key_path(project_dir: Path) -> Path:
    """The project's SSH private key: PROJECT/.orchestrate/ssh/id_ed25519."""
    return paths.ssh_key(project_dir)


def ensure_ssh_key(project_dir: Path) -> Path:
    """Generate the project's key pair once (0600 private key); return the private key path."""
    key = ssh_key_path(project_dir)
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    key.parent.chmod(0o700)
    with file_lock(key.parent / ".lock"):
        if not (key.exists() and key.with_suffix(".pub").exists()):
            key.unlink(missing_ok=True)
            key.with_suffix(".pub").unlink(missing_ok=True)
            run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"orchestrate@{project_dir.name}",
                         "-f", key])
    key.chmod(0o600)
    return key


def known_hosts_without(text: str, addresses: Iterable[str]) -> str:
    """`text` (a known_hosts file) without the lines whose host field names one of `addresses`."""
    drop = set(addresses)
    kept = []
    for line in text.splitlines():
        hosts = line.split(" ", 1)[0].split(",") if line.strip() else []
        if not drop.intersection(h.strip("[]").split("]:")[0] for h in hosts):
            kept.append(line)
    return "".join(f"{line}\n" for line in kept)


def _update_known_hosts(path: Path, address: str, public_key: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        text = path.read_text() if path.exists() else ""
        text = known_hosts_without(text, [address])
        if public_key:
            key_type, key_data = public_key.split()[:2]
            text += f"{address} {key_type} {key_data}\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


# --- hosts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostStatus:
    """A host as the fleet sees it."""

    name: str
    address: str
    groups: tuple[str, ...]
    state: HostState

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "groups": list(self.groups), "state": self.state}


@dataclass(frozen=True)
class HostRecord:
    """What a host dir remembers about its host (host.json)."""

    name: str
    address: str
    groups: tuple[str, ...]
    bridge: str
    subnet: str
    lowerdir: str

    @classmethod
    def load(cls, path: Path) -> HostRecord:
        data = json.loads(path.read_text())
        data["groups"] = tuple(data.get("groups", ()))
        return cls(**data)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)


def network_file(address: str, prefixlen: int) -> str:
    """systemd-networkd config of the container side of the veth (no DHCP, no IPv6 wait)."""
    return (
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={address}/{prefixlen}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )


@dataclass
class LocalFleet:
    """The hosts of one environment: create, start, stop and destroy them.

    `state_dir` holds one directory per host (upper/work/merged dirs, host.json, console.log,
    supervisor.pid). Everything is keyed by host name and bridge, so fleets of different
    projects and tests run side by side as long as their prefixes and bridges differ.
    """

    network: FleetNetwork
    state_dir: Path
    project_dir: Path
    known_hosts: Path | None = None
    store: ImageStore = field(default_factory=ImageStore)
    recipe: ImageRecipe = field(default_factory=ImageRecipe)
    boot_timeout: float = 90.0
    _bridge_ready: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).absolute()
        self.project_dir = Path(self.project_dir).absolute()
        if self.known_hosts is None:
            # state_dir is .orchestrate/<env>/hosts; the env's known_hosts sits beside it.
            self.known_hosts = self.state_dir.parent / "known_hosts"

    # -- paths and state

    def host_dir(self, name: str) -> Path:
        return self.state_dir / name

    def _record_path(self, name: str) -> Path:
        return self.host_dir(name) / "host.json"

    def record(self, name: str) -> HostRecord | None:
        """The host's record, or None when the host does not exist."""
        path = self._record_path(name)
        return HostRecord.load(path) if path.exists() else None

    def recorded_names(self) -> list[str]:
        """Names of every host with a record in the state dir."""
        if not self.state_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.state_dir.glob("*/host.json"))

    def supervisor_pid(self, name: str) -> int | None:
        """pid of the host's live supervisor, or None."""
        path = self.host_dir(name) / "supervisor.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = _cmdline(pid)
        launcher = any(arg.startswith("orchestrator.hosts") for arg in cmdline)
        if _pid_alive(pid) and launcher and str(self.host_dir(name)) in cmdline:
            return pid
        return None

    def state(self, name: str) -> HostState:
        """running (its supervisor is up), stopped (recorded, not up) or missing.

        A host whose nspawn process was killed counts as stopped even when orphaned
        processes of its container remain: `ensure` clears them and boots it again.
        """
        if self.record(name) is None:
            return "missing"
        return "running" if self.supervisor_pid(name) is not None else "stopped"

    def status(self, specs: Sequence[HostSpec]) -> list[HostStatus]:
        """State of each planned host, then of recorded hosts that are not in the plan."""
        planned = {s.name for s in specs}
        found = [HostStatus(s.name, s.address, s.groups, self.state(s.name)) for s in specs]
        for name in self.recorded_names():
            if name not in planned and (record := self.record(name)) is not None:
                found.append(HostStatus(name, record.address, record.groups, self.state(name)))
        return found

    # -- lifecycle

    def ensure(self, spec: HostSpec, *, wait: bool = True) -> HostStatus:
        """Make `spec` exist and run (idempotent).

        Present and running: nothing happens. Recorded but not running (supervisor killed,
        machine rebooted, mounts gone): leftovers are cleared, the overlay is mounted again
        over the same upper dir (its data intact) and the host boots again.
        """
        self.start(spec)
        if wait:
            self.wait_ready([spec.name])
        return HostStatus(spec.name, spec.address, spec.groups, "running")

    def ensure_all(self, specs: Sequence[HostSpec], *, timeout: float | None = None) -> list[HostStatus]:
        """Start every host (a few at a time: each start returns at once), then wait for all."""
        if specs:
            self.network.assert_own_address(specs[0].address)
            ensure_bridge(self.network)
            self._bridge_ready = True
            # Building or unpacking the image happens once, before the parallel starts.
            if any(self.record(s.name) is None for s in specs):
                self.store.ensure(self.recipe)
            ensure_ssh_key(self.project_dir)
        with ThreadPoolExecutor(max_workers=START_WORKERS) as pool:
            list(pool.map(self.start, specs))
        self.wait_ready([s.name for s in specs], timeout=timeout)
        return [HostStatus(s.name, s.address, s.groups, "running") for s in specs]

    def start(self, spec: HostSpec) -> bool:
        """Launch the host unless it runs; return whether it was launched. Does not wait."""
        self.network.assert_own_address(spec.address)
        host_dir = self.host_dir(spec.name)
        record = self.record(spec.name)
        if record is not None and (record.address != spec.address or record.bridge != self.network.bridge):
            raise HostError(
                f"{spec.name} exists with address {record.address} on {record.bridge}; "
                f"destroy it before giving it {spec.address} on {self.network.bridge}"
            )
        if record is not None and self.state(spec.name) == "running":
            return False
        # The host dir exists before the host is registered: `collect_garbage` takes a
        # registered host without its dir for the leftover of a deleted project.
        host_dir.mkdir(parents=True, exist_ok=True)
        _register(spec.name, self.network.bridge, host_dir)
        if not self._bridge_ready:
            ensure_bridge(self.network)
            self._bridge_ready = True
        raise_inotify_limits_for(len(registry_entries()))
        self._clear_leftovers(spec.name)
        if record is None:
            lowerdir = self.store.ensure(self.recipe)
            record = HostRecord(
                name=spec.name,
                address=spec.address,
                groups=tuple(spec.groups),
                bridge=self.network.bridge,
                subnet=self.network.subnet,
                lowerdir=str(lowerdir),
            )
        elif not Path(record.lowerdir).is_dir():
            raise HostError(f"{spec.name}: its image {record.lowerdir} is gone; destroy and recreate the host")
        merged = self._mount(record)
        first_boot = not self._record_path(spec.name).exists()
        if first_boot:
            self._personalize(record, merged)
        self._install_authorized_key(merged)
        record.save(self._record_path(spec.name))
        host_key = merged / "etc/ssh/ssh_host_ed25519_key.pub"
        assert self.known_hosts is not None
        _update_known_hosts(self.known_hosts, record.address, host_key.read_text() if host_key.exists() else None)
        (host_dir / STOP_REQUESTED).unlink(missing_ok=True)
        pid = start_detached(
            [sys.executable, "-m", "orchestrator.hosts.supervisor", str(host_dir)],
            log_path=host_dir / "console.log",
        )
        (host_dir / "supervisor.pid").write_text(f"{pid}\n")
        return True

    def wait_ready(self, names: Sequence[str], *, timeout: float | None = None) -> None:
        """Wait until every host's systemd is up (running/degraded) and its sshd answers."""
        if not names:
            return
        deadline = time.monotonic() + (timeout if timeout is not None else self.boot_timeout)
        with ThreadPoolExecutor(max_workers=min(len(names), 32)) as pool:
            problems = [p for p in pool.map(lambda n: self._wait_one(n, deadline), names) if p]
        if problems:
            raise HostError("hosts not ready: " + "; ".join(problems))

    def _wait_one(self, name: str, deadline: float) -> str | None:
        record = self.record(name)
        if record is None:
            return f"{name}: missing"
        self.network.assert_own_address(record.address)
        state = "not started"
        leader: int | None = None
        while time.monotonic() < deadline:
            if self.supervisor_pid(name) is None and not self._supervisor_reappears(name):
                pid_file = _read(self.host_dir(name) / "supervisor.pid").strip()
                state = f"supervisor {pid_file or '(no pid)'} exited"
                break
            # The leader changes only when the container restarts (reboot): look it up again then.
            if leader is None or not _pid_alive(leader):
                leader = container_leader(name)
            if leader is None:
                state = "container not up"
            elif not ssh_banner(record.address):
                state = "sshd not answering"
            else:
                state = system_state(leader)
                if state in ("running", "degraded"):
                    return None
            time.sleep(READY_POLL)
        log = tail(_read(self.host_dir(name) / "console.log"), 8)
        return f"{name}: {state}" + (f" (console.log: {log})" if log else "")

    def _supervisor_reappears(self, name: str) -> bool:
        # A second look before declaring the host dead: the pid file and /proc are read
        # without a lock while the launcher may still be settling in.
        time.sleep(0.2)
        return self.supervisor_pid(name) is not None

    def stop(self, name: str, *, timeout: float = 20.0) -> None:
        """Power the host off cleanly (SIGRTMIN+4 to its PID 1), then unmount and drop its cgroups."""
        self.stop_many([name], timeout=timeout)

    def stop_many(self, names: Sequence[str], *, timeout: float = 20.0) -> None:
        """Stop several hosts at once: signal all, then wait for all."""
        for name in names:
            host_dir = self.host_dir(name)
            if host_dir.is_dir():
                (host_dir / STOP_REQUESTED).write_text("")
            leader = container_leader(name)
            if leader is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGRTMIN + 4)
        deadline = time.monotonic() + timeout
        for name in names:
            while cgroup_pids(name) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._clear_leftovers(name)

    def destroy(self, name: str) -> None:
        """Stop the host and remove everything it had: dirs, mounts, cgroups, known_hosts entry, bridge if last."""
        self.destroy_many([name])

    def destroy_many(self, names: Sequence[str]) -> None:
        """Destroy several hosts; the bridge goes when no host on the machine uses it any more."""
        records = {n: self.record(n) for n in names}
        self.stop_many(names)
        for name in names:
            record = records[name]
            shutil.rmtree(self.host_dir(name), ignore_errors=True)
            if self.host_dir(name).exists():
                raise HostError(f"{name}: could not remove {self.host_dir(name)}")
            if record is not None and self.known_hosts is not None and self.known_hosts.exists():
                _update_known_hosts(self.known_hosts, record.address, None)
            _unregister(name)
        delete_bridge_if_unused(self.network.bridge)
        self._bridge_ready = False

    def destroy_all(self) -> None:
        """Destroy every host recorded in the state dir."""
        self.destroy_many(self.recorded_names())

    # -- internals

    def _clear_leftovers(self, name: str) -> None:
        """Kill whatever remains of a previous run of the host and release its mount and cgroups."""
        supervisor = self.supervisor_pid(name)
        if supervisor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)
        _kill_cgroup(name)
        merged = self.host_dir(name) / "merged"
        if _mounted(merged):
            result = run_command(["umount", merged], timeout=30, check=False)
            if result.returncode != 0:
                # Busy (a shell of an operator inside it, say): detach now, freed when released.
                run_command(["umount", "-l", merged], timeout=30)
        _remove_cgroups(name)
        # nspawn leaves this behind when /run is not a tmpfs (it refuses to rm -rf a disk fs).
        shutil.rmtree(NSPAWN_PROPAGATE_DIR / name, ignore_errors=True)

    def _mount(self, record: HostRecord) -> Path:
        host_dir = self.host_dir(record.name)
        upper, work, merged = host_dir / "upper", host_dir / "work", host_dir / "merged"
        for directory in (upper, work, merged):
            directory.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={record.lowerdir},upperdir={upper},workdir={work}"
        try:
            run_command(["mount", "-t", "overlay", "overlay", "-o", options, merged], timeout=30)
        except CommandError as exc:
            raise HostError(f"{record.name}: cannot mount its overlay: {exc.output_tail or exc.message}") from exc
        return merged

    def _personalize(self, record: HostRecord, merged: Path) -> None:
        # Written through the mount, not into upper/ directly: copy-up keeps the modes and
        # owners of the image's directories (an upper dir created here would shadow them).
        (merged / "etc/hostname").write_text(f"{record.name}\n")
        network_dir = merged / "etc/systemd/network"
        network_dir.mkdir(parents=True, exist_ok=True)
        (network_dir / "10-host0.network").write_text(
            network_file(record.address, ipaddress.IPv4Network(record.subnet).prefixlen)
        )
        write_host_key(merged / "etc/ssh/ssh_host_ed25519_key", f"root@{record.name}")

    def _install_authorized_key(self, merged: Path) -> None:
        public = ensure_ssh_key(self.project_dir).with_suffix(".pub").read_text()
        ssh_dir = merged / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        if not authorized.exists() or authorized.read_text() != public:
            authorized.write_text(public)
            authorized.chmod(0o600)


def write_host_key(path: Path, comment: str) -> None:
    """Write an ed25519 SSH host key pair (OpenSSH format, private 0600) at `path` and `path`.pub.

    Generated in-process: one ssh-keygen per host would cost a process start on a box whose
    two cores are busy booting twenty hosts.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    path.with_name(path.name + ".pub").write_text(f"{public.decode()} {comment}\n")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def ssh_banner(address: str, port: int = 22, timeout: float = 0.3) -> bool:
    """True when something speaking SSH answers on address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def system_state(leader: int) -> str:
    """`systemctl is-system-running` inside the container whose PID 1 is `leader`."""
    result = run_command(
        ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "systemctl", "is-system-running"],
        timeout=15,
        check=False,
    )
    return result.stdout.strip() or "unknown"


# --- entry points for terraform and the provision verb ----------------------------------


@dataclass(frozen=True)
class TerraformHost:
    """The `input` of one terraform_data resource of terraform/modules/local_fleet."""

    name: str
    address: str
    groups: tuple[str, ...]
    bridge: str
    subnet: str
    state_dir: Path
    project_dir: Path

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
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise HostError(f"bad host description from terraform: {exc}: {text[:200]}") from None

    def fleet(self) -> LocalFleet:
        return LocalFleet(FleetNetwork(self.bridge, self.subnet), self.state_dir, self.project_dir)

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
    """The local fleet of an environment and its planned hosts (target local only)."""
    from orchestrator.config import TerraformLocal

    terraform = loaded.env.terraform
    if not isinstance(terraform, TerraformLocal):
        raise HostError(f"environment {loaded.name} is not a local fleet (target {loaded.env.target})")
    v = terraform.vars
    network = FleetNetwork(v.bridge, v.subnet)
    fleet = LocalFleet(network, loaded.paths.hosts, loaded.project_dir, loaded.paths.known_hosts)
    specs = plan_hosts(
        v.host_prefix, network, app_count=v.app_count, monitoring_count=v.monitoring_count, lb_count=v.lb_count
    )
    return fleet, specs


def ensure_fleet_from_outputs(
    loaded: LoadedEnvironment,
    outputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    timeout: float | None = None,
) -> list[HostStatus]:
    """Bring every host in the terraform outputs up: the restore path of `orchestrate provision`.

    Terraform sees no change when a host's process died or the machine rebooted (its
    terraform_data resource is still in the state), so provision calls this after apply.
    `outputs` is `terraform output -json` (or its `hosts` value). Hosts already running are
    left alone; stopped ones boot again with their data.
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
