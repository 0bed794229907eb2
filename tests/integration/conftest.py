"""Fixtures for integration tests that need real local hosts (systemd-nspawn, booted through
orchestrator.fleet.local — the Python API, not terraform, because it is faster).

Use:

    @pytest.mark.integration
    @pytest.mark.hosts
    def test_something(fleet_factory):
        fleet = fleet_factory(app_count=2, monitoring_count=1)
        fleet.ssh(fleet.hosts[0], "systemctl is-system-running")
        run ansible with `-i fleet.inventory` (user root, the project's key, per-env known_hosts)

`fleet_factory(...)` (function scope) and `session_fleet_factory(...)` (session scope, for
read-only tests that can share hosts) both:

  1. copy the project (inventories/, terraform/, roles/, playbooks/, molecule/) into a fresh dir
     under /var/tmp/orchestrate-tests/ (not pytest's tmp_path: other pytest processes prune
     those dirs while hosts still run in them);
  2. rewrite inventories/ENV/environment.yml with a unique host_prefix and bridge (`ot` + 6 hex)
     and an unused 10.214.X.0/24 subnet (checked against `ip -4 route` and reserved against
     other test processes), the requested host counts, and any `overrides` (deep-merged);
  3. boot the hosts, wait until systemd runs and sshd answers on each;
  4. write .orchestrate/ENV/inventory.yml with orchestrator.fleet.inventory (the same format
     `orchestrate provision` writes), the project key and the env's known_hosts file (it
     already holds every host's key: the hosts' keys are generated on the controller);
  5. destroy every host, the bridge, the reservation and the dir at teardown, also when the
     test failed. Hosts left by killed runs (their dir deleted) are collected when a factory
     starts (`python -m orchestrator.fleet.local gc` does the same by hand).

The image is built on first use (~60 s, cached in /var/cache/orchestrate/images afterwards).
`unbooted_project(...)` does steps 1-2 only (for tests that provision through terraform) and
cleans up whatever hosts the copied project left behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.files import private_dir, sha256_file
from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, write_inventory
from orchestrator.fleet.local.fleet import HostSpec, LocalFleet, collect_garbage
from orchestrator.fleet.local.keys import ensure_ssh_key
from orchestrator.fleet.local.network import FleetNetwork, delete_bridge_if_unused
from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.release.artifact import release_id
from orchestrator.tools.cargo import find_cargo
from orchestrator.tools.process import CommandResult, run_command

# subnet reservations are shared with the Molecule scenarios' hosts (same files, same lock)
from tests.support.molecule_hosts import release_subnet, reserve_subnet

REPO = Path(__file__).resolve().parents[2]
PROJECT_PARTS = ("inventories", "terraform", "roles", "playbooks", "molecule")
#: where fixture projects and their hosts live (removed at teardown)
FLEETS_BASE = Path("/var/tmp/orchestrate-tests")
#: the example service's port in the shipped environments
SERVICE_PORT = 8080


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
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

    def group(self, name: str) -> list[HostSpec]:
        """Hosts of one group (app, monitoring, lb)."""
        return [h for h in self.hosts if name in h.groups]

    def host(self, name: str) -> HostSpec:
        return next(h for h in self.hosts if h.name == name)

    def ssh_argv(self, host: HostSpec, command: str) -> list[str]:
        """ssh argv for `command` on `host` (its address checked against the fleet's bridge first)."""
        address = self.network.assert_own_address(host.address)
        return [
            "ssh", "-i", str(self.private_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", f"root@{address}", command,
        ]

    def ssh(self, host: HostSpec, command: str, *, check: bool = True, timeout: float = 60) -> CommandResult:
        """Run a shell command on `host` as root over SSH."""
        return run_command(self.ssh_argv(host, command), check=check, timeout=timeout)

    def http_get(self, address: str, path: str, *, port: int = SERVICE_PORT) -> tuple[int, str]:
        """GET `path` of the service on `address` (checked against the fleet's own bridge first):
        (status, body); an HTTP error status is returned, not raised."""
        url = f"http://{self.network.assert_own_address(address)}:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def write_inventory(self) -> Path:
        connection = ConnectionSettings(user="root", private_key=ensure_ssh_key(self.project_dir),
                                        known_hosts=self.known_hosts)
        hosts = [Host(name=h.name, address=h.address, groups=h.groups, private_address=h.address)
                 for h in self.hosts]
        return write_inventory(self.inventory, build_inventory(self.env_name, hosts, connection))

    def destroy(self) -> None:
        """Remove every host the copied project has (recorded ones included), and the bridge."""
        if self.state_dir.joinpath("hosts").is_dir():
            self.fleet.destroy_all()
        delete_bridge_if_unused(self.network.bridge)


FleetFactory = Callable[..., FleetEnv]


class _Factory:
    """Makes FleetEnvs under a base dir of its own and tears all of them down in `close`.

    The base is not pytest's tmp_path: pytest sessions of other processes prune old
    /tmp/pytest-of-USER/pytest-N dirs (renaming them away) even while their hosts run,
    which would pull a host's overlay out from under it.
    """

    def __init__(self, label: str) -> None:
        # a fixed name in shared /var/tmp: made private (0700, ours) before fleets go into it
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
        tag = "ot" + secrets.token_hex(3)
        project = self.base / tag
        project.mkdir(parents=True)
        for part in PROJECT_PARTS:
            if (REPO / part).exists():
                shutil.copytree(REPO / part, project / part,
                                ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".orchestrate"))
        subnet, marker = reserve_subnet()
        env_file = project / "inventories" / env / "environment.yml"
        data = yaml.safe_load(env_file.read_text())
        data["terraform"]["vars"].update(host_prefix=tag, bridge=tag, subnet=subnet, app_count=app_count,
                                         monitoring_count=monitoring_count, lb_count=lb_count)
        if overrides:
            _deep_merge(data, overrides)
        env_file.write_text(yaml.safe_dump(data, sort_keys=False))
        made = FleetEnv(project_dir=project, env_name=env, prefix=tag, network=FleetNetwork(tag, subnet),
                        subnet_marker=marker)
        self.made.append(made)
        made.loaded  # noqa: B018 - validates the rewritten file now, with a file:line error if broken
        return made

    def boot(self, **kwargs: Any) -> FleetEnv:
        made = self.prepare(**kwargs)
        fleet, specs = fleet_for(made.loaded)
        made.hosts = specs
        fleet.ensure_all(specs)
        made.write_inventory()
        return made

    def close(self) -> None:
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


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("local hosts need root (systemd-nspawn, overlay mounts, bridges)")


@pytest.fixture
def fleet_factory() -> Iterator[FleetFactory]:
    """Boot a unique local fleet: `fleet_factory(app_count=1, monitoring_count=0, lb_count=0,
    env="dev", overrides=None) -> FleetEnv`. Destroyed at the end of the test."""
    _require_root()
    factory = _Factory(f"{os.getpid()}-fleet")
    try:
        yield factory.boot
    finally:
        factory.close()


@pytest.fixture(scope="session")
def session_fleet_factory() -> Iterator[FleetFactory]:
    """Like fleet_factory, but the fleets live until the end of the session (share read-only)."""
    _require_root()
    factory = _Factory(f"{os.getpid()}-session")
    try:
        yield factory.boot
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_unbooted_project() -> Iterator[FleetFactory]:
    """Like `unbooted_project`, shared by the tests of one module (they run in file order)."""
    _require_root()
    factory = _Factory(f"{os.getpid()}-module")
    try:
        yield factory.prepare
    finally:
        factory.close()


@pytest.fixture
def unbooted_project() -> Iterator[FleetFactory]:
    """A copied project with a unique fleet written into its env file, nothing booted:
    `unbooted_project(app_count=..., ...) -> FleetEnv`. Hosts it gets (e.g. through
    `orchestrate provision`) are destroyed at the end of the test."""
    _require_root()
    factory = _Factory(f"{os.getpid()}-project")
    try:
        yield factory.prepare
    finally:
        factory.close()


# --- builds of the example service (shared by every suite that deploys it) --------------------
#
# v1 is the example project as it is (0.1.0), v2 the same with its version bumped to 0.2.0,
# `broken` v1 built with the `broken` feature (/healthz answers 500), and `untested` a v2 whose
# own tests fail (its version was bumped without updating them). Each is a copy of the project in a
# session temp dir with its own target/, so `--release DIR/target/release/hello-service` finds the
# project's Cargo.toml two levels up.

EXAMPLE = REPO / "examples" / "hello-service"
BINARY = Path("target") / "release" / "hello-service"


@dataclass(frozen=True)
class Build:
    """One build of the example service."""

    project: Path
    version: str

    @property
    def binary(self) -> Path:
        return self.project / BINARY

    @property
    def release_id(self) -> str:
        return release_id(self.version, sha256_file(self.binary))


@dataclass(frozen=True)
class Builds:
    v1: Build
    v2: Build
    broken: Build
    untested: Path


def _copy(dest: Path, version: str, *, fix_tests: bool) -> Path:
    dest.mkdir(parents=True)
    for name in ("Cargo.toml", "Cargo.lock", "src"):
        source = EXAMPLE / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        else:
            shutil.copy2(source, dest / name)
    if version != "0.1.0":
        for path in (dest / "Cargo.toml", dest / "Cargo.lock"):
            path.write_text(path.read_text().replace('version = "0.1.0"', f'version = "{version}"'))
        if fix_tests:
            # the crate's own tests expect its version in /version
            for path in sorted((dest / "src").glob("*.rs")):
                path.write_text(path.read_text().replace("0.1.0", version))
    return dest


def _build(project: Path, *features: str) -> None:
    argv = [str(find_cargo()), "build", "--release", "--offline", "--manifest-path", str(project / "Cargo.toml")]
    if features:
        argv += ["--features", ",".join(features)]
    run_command(argv, cwd=project, timeout=1200)


@pytest.fixture(scope="session")
def hello_builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    base = tmp_path_factory.mktemp("hello-builds")
    v1 = _copy(base / "v1", "0.1.0", fix_tests=False)
    v2 = _copy(base / "v2", "0.2.0", fix_tests=True)
    broken = _copy(base / "broken", "0.1.0", fix_tests=False)
    untested = _copy(base / "untested", "0.3.0", fix_tests=False)
    _build(v1)
    _build(v2)
    _build(broken, "broken")
    return Builds(v1=Build(v1, "0.1.0"), v2=Build(v2, "0.2.0"), broken=Build(broken, "0.1.0"), untested=untested)
