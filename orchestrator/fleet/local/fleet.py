"""The embedded local fleet: systemd-nspawn hosts booting a cached Debian bookworm image.

One image serves every project: a debootstrap rootfs built from `RECIPE`, packed once into a
cached tarball (`/var/cache/orchestrate/images/<recipe-hash>.tar` with a sha256 sidecar written
last) and unpacked once to `/var/lib/orchestrate/images/<hash>/rootfs`. A host is an overlay
mount of that rootfs with its own upper dir under the environment's state dir
(`.orchestrate/<env>/hosts/<name>/`), which holds everything host-specific: hostname, static
address, SSH host key, the project's public key. The host runs as

    systemd-nspawn -D MERGED --boot --machine=NAME --network-bridge=BRIDGE
                   --register=no --keep-unit --console=passive

under a small supervisor process (`python -m orchestrator.fleet.local.supervisor HOST_DIR`), the
host's launcher, that lives in the host's own cgroup and relaunches the container when it exits
with 133 (reboot). A container whose launcher died keeps running and serving: it is `running`
with its launcher `dead`, and `start` (so `orchestrate provision`) adopts it with a new launcher
instead of booting it again.

Hosts reach nothing but their own bridge: the bridge has the first address of the subnet, hosts
get `.10` upward, and there is no NAT. Code that connects to a host first calls
`assert_own_address`, which refuses any address outside the project's bridge subnet.

This module never prints; failures raise HostError.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.errors import CommandError, HostError
from orchestrator.files import atomic_write
from orchestrator.fleet.cloudinit import cloud_config, generate_host_key
from orchestrator.fleet.local.image import ImageRecipe, ImageStore
from orchestrator.fleet.local.keys import _update_known_hosts, ensure_ssh_key
from orchestrator.fleet.local.network import (
    FleetNetwork,
    delete_bridge_if_unused,
    ensure_bridge,
    raise_inotify_limits_for,
)
from orchestrator.fleet.local.processes import (
    _cmdline,
    _kill_cgroup,
    _mounted,
    _overlay_mounts_with_upper,
    _pid_alive,
    _read,
    _remove_cgroups,
    cgroup_pids,
    container_leader,
    nspawn_pid,
    ssh_banner,
    system_state,
)
from orchestrator.fleet.local.registry import _register, _unregister, registry_entries
from orchestrator.fleet.local.supervisor import STOP_REQUESTED
from orchestrator.fleet.local.userdata import apply_cloud_config, install_authorized_key
from orchestrator.tools.process import run_command, start_detached, tail

HostLiveness = Literal["running", "stopped", "missing"]
LauncherState = Literal["alive", "dead"]
StartAction = Literal["none", "booted", "adopted"]
"""What `LocalFleet.start` did: nothing (the host ran with its launcher), booted it, or adopted its
running container with a new launcher."""

#: what each start action means, for an operator (`orchestrate provision` prints it)
START_ACTIONS: dict[str, str] = {
    "booted": "was not running: booted it again (its data kept)",
    "adopted": "its container ran without its launcher (the supervisor process had died): a new launcher "
               "adopted it; the container was not restarted",
}


#: the login user of a fleet whose environment names none (terraform.vars.ssh_user)
SSH_USER = "root"


#: hosts started at once by ensure_all (starting is mostly waiting on mount, fork and exec)
START_WORKERS = 4


READY_POLL = 0.05


NSPAWN_PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")


_HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")  # \Z: a trailing newline is no host name


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


@dataclass(frozen=True)
class LocalHostState:
    """A host as the fleet sees it."""

    name: str
    address: str
    groups: tuple[str, ...]
    state: HostLiveness
    launcher: LauncherState | None = None
    """A running local host's launcher: alive, or dead while its container still runs (None: not
    a running local host)."""
    action: StartAction | None = None
    """What `ensure`/`ensure_all` did to the host (None: not asked to)."""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "address": self.address, "groups": list(self.groups),
                                "state": self.state}
        if self.launcher is not None:
            data["launcher"] = self.launcher
        if self.action is not None:
            data["action"] = self.action
        return data


@dataclass(frozen=True)
class HostRecord:
    """What a host dir remembers about its host (host.json)."""

    name: str
    address: str
    groups: tuple[str, ...]
    bridge: str
    subnet: str
    lowerdir: str
    login_user: str = SSH_USER

    @classmethod
    def load(cls, path: Path) -> HostRecord:
        data = json.loads(path.read_text())
        data["groups"] = tuple(data.get("groups", ()))
        return cls(**data)

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), indent=2) + "\n")


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

    `login_user` is who the controller logs in as: root, or a user with passwordless sudo whose
    hosts refuse root's SSH login, as cloud images do (the host's cloud-config says so, see
    orchestrator.fleet.cloudinit).
    """

    network: FleetNetwork
    state_dir: Path
    project_dir: Path
    known_hosts: Path | None = None
    login_user: str = SSH_USER
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
        launcher = any(arg.startswith("orchestrator.fleet.local") for arg in cmdline)
        if _pid_alive(pid) and launcher and str(self.host_dir(name)) in cmdline:
            return pid
        return None

    def state(self, name: str) -> HostLiveness:
        """running (its launcher or its container is up), stopped (recorded, neither up) or missing.

        A host whose nspawn process was killed counts as stopped even when orphaned
        processes of its container remain: `ensure` clears them and boots it again. A
        container whose launcher died still runs: see `launcher`.
        """
        if self.record(name) is None:
            return "missing"
        return "running" if self.launcher(name) is not None else "stopped"

    def launcher(self, name: str) -> LauncherState | None:
        """alive (the host's supervisor runs), dead (it is gone, the container still runs), or
        None (neither runs)."""
        if self.supervisor_pid(name) is not None:
            return "alive"
        return "dead" if nspawn_pid(name) is not None else None

    def host_status(self, name: str, address: str, groups: tuple[str, ...],
                    action: StartAction | None = None) -> LocalHostState:
        """What the machine says of one host (state and launcher), with what was done to it."""
        if self.record(name) is None:
            return LocalHostState(name, address, groups, "missing", action=action)
        launcher = self.launcher(name)
        return LocalHostState(name, address, groups, "running" if launcher else "stopped", launcher, action)

    def status(self, specs: Sequence[HostSpec]) -> list[LocalHostState]:
        """State of each planned host, then of recorded hosts that are not in the plan."""
        planned = {s.name for s in specs}
        found = [self.host_status(s.name, s.address, s.groups) for s in specs]
        for name in self.recorded_names():
            if name not in planned and (record := self.record(name)) is not None:
                found.append(self.host_status(name, record.address, record.groups))
        return found

    # -- lifecycle

    def ensure(self, spec: HostSpec, *, wait: bool = True) -> LocalHostState:
        """Make `spec` exist and run (idempotent).

        Present and running: nothing happens. Running without its launcher: a new launcher
        adopts the container (no restart). Recorded but not running (nspawn killed, machine
        rebooted, mounts gone): leftovers are cleared, the overlay is mounted again over the
        same upper dir (its data intact) and the host boots again.
        """
        action = self.start(spec)
        if wait:
            self.wait_ready([spec.name])
        return LocalHostState(spec.name, spec.address, spec.groups, "running", "alive", action)

    def ensure_all(self, specs: Sequence[HostSpec], *, timeout: float | None = None) -> list[LocalHostState]:
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
            actions = list(pool.map(self.start, specs))
        self.wait_ready([s.name for s in specs], timeout=timeout)
        return [LocalHostState(s.name, s.address, s.groups, "running", "alive", action)
                for s, action in zip(specs, actions, strict=True)]

    def start(self, spec: HostSpec) -> StartAction:
        """Launch the host unless it runs, adopt its container when only its launcher died; say
        which. Does not wait."""
        self.network.assert_own_address(spec.address)
        host_dir = self.host_dir(spec.name)
        record = self.record(spec.name)
        if record is not None and (record.address != spec.address or record.bridge != self.network.bridge):
            raise HostError(
                f"{spec.name} exists with address {record.address} on {record.bridge}; "
                f"destroy it before giving it {spec.address} on {self.network.bridge}"
            )
        if record is not None and record.login_user != self.login_user:
            raise HostError(f"{spec.name} exists with login user {record.login_user}; "
                            f"destroy it before making {self.login_user} its login user")
        if record is not None and (launcher := self.launcher(spec.name)) is not None:
            if launcher == "alive":
                return "none"
            adopted = nspawn_pid(spec.name)
            if adopted is not None:
                self._launch(spec.name, adopt=adopted)
                return "adopted"
            # the container ended between the two looks: boot it below
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
                login_user=self.login_user,
            )
        elif not Path(record.lowerdir).is_dir():
            raise HostError(f"{spec.name}: its image {record.lowerdir} is gone; destroy and recreate the host")
        merged = self._mount(record)
        first_boot = not self._record_path(spec.name).exists()
        if first_boot:
            self._personalize(record, merged)
        self._install_authorized_key(merged, record.login_user)
        record.save(self._record_path(spec.name))
        host_key = merged / "etc/ssh/ssh_host_ed25519_key.pub"
        assert self.known_hosts is not None
        _update_known_hosts(self.known_hosts, record.address, host_key.read_text() if host_key.exists() else None)
        (host_dir / STOP_REQUESTED).unlink(missing_ok=True)
        self._launch(spec.name)
        return "booted"

    def _launch(self, name: str, *, adopt: int | None = None) -> None:
        """Start the host's launcher (with `adopt`: over that running systemd-nspawn process)."""
        host_dir = self.host_dir(name)
        argv = [sys.executable, "-m", "orchestrator.fleet.local.supervisor", str(host_dir)]
        pid = start_detached(argv + (["--adopt", str(adopt)] if adopt is not None else []),
                             log_path=host_dir / "console.log")
        (host_dir / "supervisor.pid").write_text(f"{pid}\n")

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
        # what cloud-init does on a cloud image's first boot, from the same document (login user,
        # sudo, root's login, the controller's host key)
        public = ensure_ssh_key(self.project_dir).with_suffix(".pub").read_text()
        apply_cloud_config(merged, cloud_config(host_key=generate_host_key(f"root@{record.name}"),
                                                login_user=record.login_user, authorized_keys=[public]))

    def _install_authorized_key(self, merged: Path, user: str) -> None:
        # every start: a host made before the project's key was (re)generated still lets it in
        install_authorized_key(merged, user, ensure_ssh_key(self.project_dir).with_suffix(".pub").read_text())


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
