"""Local hosts for Molecule scenarios: `python tests/support/molecule_hosts.py ACTION ...`.

    create            boot a scenario's platforms as local hosts (as root or, with --login-user, as a
                      user with sudo); print molecule's instance config
    destroy           destroy the hosts `create` made for a scenario (idempotent)
    build             build the example service once per source hash; print the release as JSON
    render-monitoring render Prometheus/Alertmanager files for a scenario's hosts into a directory

Every scenario's molecule.yml points its create, prepare and destroy playbooks at the shared ones in
molecule/resources/ (one copy, not four), which call these actions from localhost, so a
scenario's hosts are the same systemd-nspawn hosts `orchestrate up` makes.

Each `create` makes a fleet of its own: a tag `om` + 6 hex names the bridge and prefixes the
host names (host names and bridges are global on the machine), and the subnet is a 10.214.X.0/24
reserved through the same reservation files the integration tests use, so scenario fleets, test
fleets and other runs never collide. Everything of a fleet lives in
/var/tmp/orchestrate-molecule/fleets/<tag>/ (its own SSH key, host dirs); the scenario's
ephemeral directory keeps `orchestrate-fleet.json`, which `destroy` reads back.

Errors go to stderr, one line, exit 1; results are JSON on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import CommandError, OrchestratorError
from orchestrator.files import file_lock, private_dir
from orchestrator.fleet.local.fleet import HostSpec, LocalFleet, collect_garbage
from orchestrator.fleet.local.keys import ensure_ssh_key
from orchestrator.fleet.local.network import FleetNetwork, delete_bridge_if_unused
from orchestrator.fleet.local.registry import LOCK_DIR
from orchestrator.tools.process import run_command

BASE_DIR = Path("/var/tmp/orchestrate-molecule")
FLEETS_DIR = BASE_DIR / "fleets"
BUILDS_DIR = BASE_DIR / "builds"


def base_dir() -> Path:
    """BASE_DIR, made private (0700, ours) before anything in it is used.

    Its name is fixed and /var/tmp is shared: a directory another user made there first could
    hand us a build to deploy or take the fleets' SSH keys (orchestrator.files.private_dir).
    """
    return private_dir(BASE_DIR)
FLEET_FILE = "orchestrate-fleet.json"

#: Shared with tests/support/fleet.py: the same pool, lock and marker files, so that test
#: fleets and scenario fleets reserve subnets from one another. A marker holds the pid that
#: keeps the subnet (here: the supervisor of the fleet's first host) or `free <epoch>`.
SUBNET_PREFIX = "10.214"
RESERVATIONS = LOCK_DIR / "test-subnets"
RESERVATIONS_LOCK = LOCK_DIR / "test-subnets.lock"
#: a released subnet stays unused this long: ssh ControlPersist masters (60 s) may still point at it
SUBNET_QUIET_SECONDS = 180

#: source files of the example service whose content keys the build cache
SOURCE_GLOBS = ("Cargo.toml", "Cargo.lock", "src/**/*.rs")
CARGO_TIMEOUT = 1800


class MoleculeHostError(OrchestratorError):
    """A scenario's hosts or build could not be made."""


# --- subnets -----------------------------------------------------------------------------


def _routed_networks() -> list[ipaddress.IPv4Network]:
    routes = run_command(["ip", "-4", "-o", "route", "show"], timeout=30).stdout
    found = []
    for line in routes.splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first != "default":
                found.append(ipaddress.IPv4Network(first, strict=False))
    return found


def marker_blocks(fields: Sequence[str], now: float | None = None) -> bool:
    """Whether a reservation marker's content (`PID` or `free EPOCH`) still blocks its subnet."""
    try:
        if fields[0] == "free":
            return (now if now is not None else time.time()) - float(fields[1]) < SUBNET_QUIET_SECONDS
        return Path(f"/proc/{int(fields[0])}").exists()
    except (IndexError, ValueError):
        return False


def reserve_subnet() -> tuple[str, Path]:
    """An unused 10.214.X.0/24 (not routed, not reserved) and its marker, held by this process."""
    RESERVATIONS.mkdir(parents=True, exist_ok=True)
    with file_lock(RESERVATIONS_LOCK):
        routed = _routed_networks()
        candidates = list(range(1, 250))
        random.shuffle(candidates)
        for third in candidates:
            subnet = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{third}.0/24")
            if any(subnet.overlaps(net) for net in routed):
                continue
            marker = RESERVATIONS / str(third)
            if marker.exists() and marker_blocks(marker.read_text().split()):
                continue
            marker.write_text(f"{os.getpid()}\n")
            return str(subnet), marker
    raise MoleculeHostError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")


def hold_subnet(marker: Path, pid: int) -> None:
    """Let `pid` (a process living as long as the fleet) hold the reservation."""
    with file_lock(RESERVATIONS_LOCK):
        marker.write_text(f"{pid}\n")


def release_subnet(marker: Path) -> None:
    """Give the subnet back (usable again after SUBNET_QUIET_SECONDS)."""
    with file_lock(RESERVATIONS_LOCK):
        marker.write_text(f"free {time.time():.0f}\n")


# --- fleets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    """One molecule platform: its instance name and inventory groups."""

    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`NAME` or `NAME:GROUP,GROUP`."""
        name, _, groups = text.partition(":")
        return cls(name, tuple(g for g in groups.split(",") if g))


@dataclass(frozen=True)
class ScenarioFleet:
    """What `create` made for a scenario (saved as orchestrate-fleet.json in its ephemeral dir)."""

    tag: str
    bridge: str
    subnet: str
    fleet_dir: str
    known_hosts: str
    subnet_marker: str
    hosts: dict[str, str]
    """instance name -> host name"""
    login_user: str = "root"
    """who molecule logs in as: root, or a user with passwordless sudo (root's login then refused)"""

    @property
    def fleet(self) -> LocalFleet:
        return LocalFleet(FleetNetwork(self.bridge, self.subnet), Path(self.fleet_dir) / "hosts",
                          Path(self.fleet_dir), Path(self.known_hosts), login_user=self.login_user)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ScenarioFleet:
        return cls(**json.loads(path.read_text()))


def instance_config(fleet: ScenarioFleet, specs: dict[str, HostSpec]) -> list[dict[str, Any]]:
    """Molecule's instance config: one entry per instance (connection data of its host)."""
    key = ensure_ssh_key(Path(fleet.fleet_dir))
    return [
        {
            "instance": instance,
            "address": fleet.fleet.network.assert_own_address(spec.address),
            "user": fleet.login_user,
            "port": 22,
            "identity_file": str(key),
            "host_name": spec.name,
            "known_hosts": fleet.known_hosts,
        }
        for instance, spec in specs.items()
    ]


def create(platforms: Sequence[Platform], ephemeral_dir: Path, login_user: str = "root") -> list[dict[str, Any]]:
    """Boot one host per platform on a bridge and subnet of their own; return the instance config.

    `login_user` other than root makes the hosts as cloud images are: that user with passwordless
    sudo, root's SSH login refused (the scenario's plays use become). Runs again over an existing
    fleet start only what is not running (molecule create twice).
    """
    if not platforms:
        raise MoleculeHostError("the scenario has no platforms")
    names = [p.name for p in platforms]
    if len(set(names)) != len(names):
        raise MoleculeHostError(f"platform names repeat: {', '.join(names)}")
    state_file = ephemeral_dir / FLEET_FILE
    ephemeral_dir.mkdir(parents=True, exist_ok=True)
    base_dir()
    FLEETS_DIR.mkdir(mode=0o700, exist_ok=True)
    collect_garbage()  # hosts of killed runs whose fleet dir was removed
    if state_file.exists():
        scenario = ScenarioFleet.load(state_file)
        if sorted(scenario.hosts) != sorted(names):
            raise MoleculeHostError(f"{state_file} holds other instances ({', '.join(sorted(scenario.hosts))}); "
                                    "run `molecule destroy` first")
        marker = Path(scenario.subnet_marker)
    else:
        tag = "om" + secrets.token_hex(3)
        subnet, marker = reserve_subnet()
        fleet_dir = FLEETS_DIR / tag
        fleet_dir.mkdir(parents=True)
        scenario = ScenarioFleet(
            tag=tag, bridge=tag, subnet=subnet, fleet_dir=str(fleet_dir),
            known_hosts=str(ephemeral_dir / "known_hosts"), subnet_marker=str(marker),
            hosts={p.name: f"{tag}-{p.name}" for p in platforms}, login_user=login_user,
        )
        # saved before anything boots: a failed create is still destroyed by `molecule destroy`
        scenario.save(state_file)
    network = FleetNetwork(scenario.bridge, scenario.subnet)
    specs = {
        p.name: HostSpec(scenario.hosts[p.name], network.host_address(i), p.groups)
        for i, p in enumerate(platforms)
    }
    fleet = scenario.fleet
    ensure_ssh_key(Path(scenario.fleet_dir))
    fleet.ensure_all(list(specs.values()))
    supervisor = fleet.supervisor_pid(specs[platforms[0].name].name)
    if supervisor is not None:
        hold_subnet(marker, supervisor)
    return instance_config(scenario, specs)


def destroy(ephemeral_dir: Path) -> list[str]:
    """Destroy the scenario's hosts, bridge, fleet dir and subnet reservation; return the host names."""
    state_file = ephemeral_dir / FLEET_FILE
    if not state_file.exists():
        return []
    scenario = ScenarioFleet.load(state_file)
    fleet = scenario.fleet
    names = sorted(set(scenario.hosts.values()) | set(fleet.recorded_names()))
    fleet.destroy_many(names)
    delete_bridge_if_unused(scenario.bridge)
    release_subnet(Path(scenario.subnet_marker))
    shutil.rmtree(scenario.fleet_dir, ignore_errors=True)
    state_file.unlink()
    return names


# --- the example service ------------------------------------------------------------------


def source_hash(project: Path, features: Sequence[str]) -> str:
    """16 hex of the sha256 over the project's sources (path and content) and the features."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in SOURCE_GLOBS for p in project.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(str(path.relative_to(project)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(",".join(sorted(features)).encode())
    return digest.hexdigest()[:16]


def build(project: Path, service: str, features: Sequence[str] = ()) -> dict[str, str]:
    """The release of `project` built with `features`: {id, version, sha256, binary}.

    The binary is staged as BUILDS_DIR/<source hash>/<id>/<service> (the name the rust_service
    role expects) and built only when that cache entry is missing.
    """
    from orchestrator.files import sha256_file
    from orchestrator.release.artifact import release_id
    from orchestrator.tools.cargo import cargo_version, find_cargo

    project = project.resolve()
    base_dir()
    BUILDS_DIR.mkdir(mode=0o700, exist_ok=True)
    key = source_hash(project, features)
    entry = BUILDS_DIR / key
    meta_path = entry / "release.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if Path(meta["binary"]).is_file() and sha256_file(Path(meta["binary"])) == meta["sha256"]:
            return dict(meta)
    with file_lock(BUILDS_DIR / "build.lock"):
        if meta_path.exists():
            return dict(json.loads(meta_path.read_text()))
        target_dir = BUILDS_DIR / "cargo-target"
        argv = [str(find_cargo()), "build", "--release", "--offline", "--manifest-path",
                str(project / "Cargo.toml")]
        if features:
            argv += ["--features", ",".join(features)]
        try:
            run_command(argv, env={**os.environ, "CARGO_TARGET_DIR": str(target_dir)}, timeout=CARGO_TIMEOUT)
        except CommandError as exc:
            raise MoleculeHostError(f"building {project} failed: {exc.message}\n{exc.output_tail}") from exc
        built = target_dir / "release" / project.name
        if not built.is_file():
            raise MoleculeHostError(f"cargo build left no {built}")
        digest = sha256_file(built)
        version = cargo_version(project / "Cargo.toml")
        rid = release_id(version, digest)
        staged = entry / rid / service
        staged.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged.with_name(f".{service}.tmp")
        shutil.copyfile(built, tmp)
        tmp.chmod(0o755)
        tmp.replace(staged)
        meta = {"id": rid, "version": version, "sha256": digest, "binary": str(staged)}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # last: an entry without it is rebuilt
        return meta


# --- monitoring files ---------------------------------------------------------------------


def render_monitoring(project_dir: Path, env_name: str, out: Path, hosts: Sequence[tuple[str, str, tuple[str, ...]]],
                      ) -> dict[str, Any]:
    """Render the monitoring files of `env_name` for `hosts` (name, address, groups) into `out`.

    Also writes out/heal.token (0600) once. Returns {"directory", "token_file", "rules": [names]}.
    """
    from orchestrator.config.loader import Project
    from orchestrator.fleet.inventory import Host
    from orchestrator.monitoring.files import render_monitoring_texts, write_monitoring
    from orchestrator.monitoring.rules import alert_rules

    loaded = Project(project_dir).load(env_name)
    inventory = [Host(name=n, address=a, groups=g, private_address=a) for n, a, g in hosts]
    write_monitoring(out, render_monitoring_texts(loaded, inventory))
    token = out / "heal.token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return {"directory": str(out), "token_file": str(token), "rules": [r.name for r in alert_rules(loaded.env)]}


def parse_host(text: str) -> tuple[str, str, tuple[str, ...]]:
    """`NAME=ADDRESS=GROUP,GROUP` -> (name, address, groups)."""
    name, _, rest = text.partition("=")
    address, _, groups = rest.partition("=")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise MoleculeHostError(f"--host {text!r}: expected NAME=ADDRESS=GROUP,GROUP with an IP address") from None
    return name, address, tuple(g for g in groups.split(",") if g)


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tests/support/molecule_hosts.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", help="boot the scenario's hosts, print the instance config")
    p.add_argument("--ephemeral-dir", type=Path, required=True)
    p.add_argument("--platform", action="append", default=[], type=Platform.parse, help="NAME[:GROUP,GROUP]")
    p.add_argument("--login-user", default="root", help="user molecule logs in as (not root: with sudo)")
    p = sub.add_parser("destroy", help="destroy the scenario's hosts")
    p.add_argument("--ephemeral-dir", type=Path, required=True)
    p = sub.add_parser("build", help="build the example service (cached by source hash)")
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--features", default="")
    p = sub.add_parser("render-monitoring", help="render monitoring files for the scenario's hosts")
    p.add_argument("--project-dir", type=Path, required=True)
    p.add_argument("--env", default="dev")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--host", action="append", default=[], help="NAME=ADDRESS=GROUP,GROUP")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one action; return the process exit code."""
    args = _parser().parse_args(argv)
    try:
        result: Any
        if args.action == "create":
            result = create(args.platform, args.ephemeral_dir.absolute(), args.login_user)
        elif args.action == "destroy":
            result = destroy(args.ephemeral_dir.absolute())
        elif args.action == "build":
            features = [f for f in args.features.split(",") if f]
            result = build(args.project, args.service, features)
        else:
            hosts = [parse_host(text) for text in args.host]
            result = render_monitoring(args.project_dir.absolute(), args.env, args.out.absolute(), hosts)
    except OrchestratorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
