"""Throwaway local fleets for tests and benchmarks: a copied project with hosts of its own.

    with fleets("deploy") as factory:            # skips the test without root
        fleet = factory.boot(app_count=2, monitoring_count=1)
        fleet.ssh(fleet.hosts[0], "systemctl is-system-running")
        code, data, err = fleet.orchestrate("status")       # orchestrate --project-dir P status dev --json

`FleetFactory.boot(...)` and `.prepare(...)` both

  1. copy the project (inventories/, terraform/, roles/, playbooks/, molecule/) into a fresh dir
     under /var/tmp/orchestrate-tests/ (not pytest's tmp_path: other pytest processes prune
     those dirs while hosts still run in them);
  2. rewrite inventories/ENV/environment.yml with a unique host_prefix and bridge (`ot` + 6 hex)
     and an unused 10.214.X.0/24 subnet (checked against `ip -4 route` and reserved against
     other test processes and Molecule scenarios), the requested host counts, and any `overrides`
     (deep-merged).

`boot` then boots the hosts, waits until systemd runs and sshd answers on each, and writes
.orchestrate/ENV/inventory.yml with orchestrator.fleet.inventory (the format `orchestrate
provision` writes), the project key and the env's known_hosts file (it already holds every host's
key: the hosts' keys are generated on the controller). `close()` destroys every host, the bridge,
the reservation and the dir, also after a failure. Hosts left by killed runs (their dir deleted)
are collected when a factory starts (`python -m orchestrator.fleet.local gc` does the same by hand).

The image is built on first use (~60 s, cached in /var/cache/orchestrate/images afterwards).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.config.schema import TerraformLocal
from orchestrator.files import private_dir
from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, write_inventory
from orchestrator.fleet.local.fleet import HostSpec, LocalFleet, collect_garbage
from orchestrator.fleet.local.keys import ensure_ssh_key
from orchestrator.fleet.local.network import FleetNetwork, delete_bridge_if_unused
from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.tools.process import CommandResult, run_command
from tests.support.cli import DEFAULT_TIMEOUT, orchestrate
from tests.support.molecule_hosts import release_subnet, reserve_subnet
from tests.support.net import http_get
from tests.support.project import copy_project

#: where fixture projects and their hosts live (removed at teardown)
FLEETS_BASE = Path("/var/tmp/orchestrate-tests")
#: the example service's port in the shipped environments
SERVICE_PORT = 8080

#: Overrides of the traffic suites and the traffic benchmark: short gates and holds (they run
#: load of ~50 requests/s through the LB).
TRAFFIC_OVERRIDES: dict[str, Any] = {
    "service": {"health": {"timeout": "5s", "interval": "100ms"}},
    "rollout": {"traffic_steps": [10, 25, 50, 75, 100], "step_hold": "3s", "max_error_ratio": 0.05,
                "max_latency": "500ms"},
}


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `extra` into `base` (nested mappings key by key; anything else replaces)."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


@dataclass
class FleetEnv:
    """A copied project with a unique local fleet (booted or not)."""

    project_dir: Path
    env_name: str
    prefix: str
    network: FleetNetwork
    subnet_marker: Path
    hosts: list[HostSpec] = field(default_factory=list)

    @property
    def loaded(self) -> LoadedEnvironment:
        return Project(self.project_dir).load(self.env_name)

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".orchestrate" / self.env_name

    @property
    def inventory(self) -> Path:
        return self.state_dir / "inventory.yml"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def private_key(self) -> Path:
        return self.project_dir / ".orchestrate" / "ssh" / "id_ed25519"

    @property
    def fleet(self) -> LocalFleet:
        return fleet_for(self.loaded)[0]

    @property
    def login_user(self) -> str:
        """Who the controller logs in as (terraform.vars.ssh_user): root, or a user with sudo."""
        terraform = self.loaded.env.terraform
        assert isinstance(terraform, TerraformLocal)
        return terraform.vars.ssh_user

    def group(self, name: str) -> list[HostSpec]:
        """Hosts of one group (app, monitoring, lb)."""
        return [h for h in self.hosts if name in h.groups]

    def host(self, name: str) -> HostSpec:
        return next(h for h in self.hosts if h.name == name)

    def ssh_argv(self, host: HostSpec, command: str, *, user: str | None = None) -> list[str]:
        """ssh argv for `command` on `host` as root (its address checked against the fleet's bridge
        first): logged in as the fleet's login user, through `sudo -n` when that is not root.
        `user` logs in as that user instead, without sudo."""
        address = self.network.assert_own_address(host.address)
        login = user or self.login_user
        if user is None and login != "root":
            command = f"sudo -n sh -c {shlex.quote(command)}"
        return [
            "ssh", "-i", str(self.private_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", f"{login}@{address}", command,
        ]

    def ssh(self, host: HostSpec, command: str, *, check: bool = True, timeout: float = 60,
            user: str | None = None) -> CommandResult:
        """Run a shell command on `host` as root over SSH (as `user`, without sudo, when given)."""
        return run_command(self.ssh_argv(host, command, user=user), check=check, timeout=timeout)

    def http_get(self, address: str, path: str, *, port: int = SERVICE_PORT) -> tuple[int, str]:
        """GET `path` of the service on `address` (checked against the fleet's own bridge first):
        (status, body); an HTTP error status is returned, not raised."""
        return http_get(f"http://{address}:{port}{path}", network=self.network)

    def orchestrate(self, verb: str, *args: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, dict[str, Any], str]:
        """`orchestrate --project-dir P VERB ENV ARGS... --json`: (exit code, JSON, stderr)."""
        return orchestrate(self.project_dir, verb, self.env_name, *args, timeout=timeout)

    def write_inventory(self) -> Path:
        connection = ConnectionSettings(user=self.login_user, private_key=ensure_ssh_key(self.project_dir),
                                        known_hosts=self.known_hosts)
        hosts = [Host(name=h.name, address=h.address, groups=h.groups, private_address=h.address)
                 for h in self.hosts]
        return write_inventory(self.inventory, build_inventory(self.env_name, hosts, connection))

    def destroy(self) -> None:
        """Remove every host the copied project has (recorded ones included), and the bridge."""
        if self.state_dir.joinpath("hosts").is_dir():
            self.fleet.destroy_all()
        delete_bridge_if_unused(self.network.bridge)


#: what the fleet fixtures yield: `boot` or `prepare` of a FleetFactory
MakeFleet = Callable[..., FleetEnv]


class FleetFactory:
    """Makes FleetEnvs under a base dir of its own and tears all of them down in `close`.

    The base is not pytest's tmp_path: pytest sessions of other processes prune old
    /tmp/pytest-of-USER/pytest-N dirs (renaming them away) even while their hosts run,
    which would pull a host's overlay out from under it.
    """

    def __init__(self, label: str) -> None:
        private_dir(FLEETS_BASE)
        # Leftovers of test runs that were killed: hosts whose dirs are gone.
        collect_garbage()
        self.base = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=FLEETS_BASE))
        self.made: list[FleetEnv] = []

    def prepare(
        self,
        *,
        env: str = "dev",
        app_count: int = 1,
        monitoring_count: int = 0,
        lb_count: int = 0,
        overrides: Mapping[str, Any] | None = None,
    ) -> FleetEnv:
        """A copied project with a unique fleet written into its env file, nothing booted."""
        tag = "ot" + secrets.token_hex(3)
        project = copy_project(self.base / tag)
        subnet, marker = reserve_subnet()
        env_file = project / "inventories" / env / "environment.yml"
        data = yaml.safe_load(env_file.read_text())
        data["terraform"]["vars"].update(host_prefix=tag, bridge=tag, subnet=subnet, app_count=app_count,
                                         monitoring_count=monitoring_count, lb_count=lb_count)
        if overrides:
            deep_merge(data, overrides)
        env_file.write_text(yaml.safe_dump(data, sort_keys=False))
        made = FleetEnv(project_dir=project, env_name=env, prefix=tag, network=FleetNetwork(tag, subnet),
                        subnet_marker=marker)
        self.made.append(made)
        made.loaded  # noqa: B018 - validates the rewritten file now, with a file:line error if broken
        return made

    def boot(self, **kwargs: Any) -> FleetEnv:
        """`prepare` (same arguments), then boot the hosts and write the inventory."""
        made = self.prepare(**kwargs)
        fleet, specs = fleet_for(made.loaded)
        made.hosts = specs
        fleet.ensure_all(specs)
        made.write_inventory()
        return made

    def close(self) -> None:
        """Destroy everything made; raise at the end when some of it could not be destroyed."""
        errors = []
        for made in reversed(self.made):
            try:
                made.destroy()
            except Exception as exc:  # tear everything down, report at the end
                errors.append(f"{made.prefix}: {exc}")
            release_subnet(made.subnet_marker)
        if errors:
            raise RuntimeError("fleet teardown failed: " + "; ".join(errors))
        shutil.rmtree(self.base, ignore_errors=True)


def require_root() -> None:
    """Skip the test unless it runs as root (local hosts need it)."""
    if os.geteuid() != 0:
        pytest.skip("local hosts need root (systemd-nspawn, overlay mounts, bridges)")


@contextlib.contextmanager
def fleets(label: str) -> Iterator[FleetFactory]:
    """A FleetFactory labelled `<pid>-<label>`, closed on the way out (the test is skipped without root)."""
    require_root()
    factory = FleetFactory(f"{os.getpid()}-{label}")
    try:
        yield factory
    finally:
        factory.close()
