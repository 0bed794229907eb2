"""Builds of the example service (examples/hello-service) for tests and benchmarks.

Each build is a copy of the example's sources in a directory of its own with its own target/, so
`--release DIR/target/release/hello-service` finds the project's Cargo.toml two levels up.

`build_hello(base)`: v1 is the example as it is (0.1.0), v2 the same with its version bumped to
0.2.0, `broken` v1 built with the `broken` feature (/healthz answers 500), and `untested` a 0.3.0
copy, not built, whose own tests fail (its version was bumped without updating them).

`build_traffic(base)`: v1 0.1.0, v2 0.2.0, v3 0.3.0 (good releases) and `flaky` 0.4.0 built with the
`flaky` feature (30% of the requests to / answer 500, deterministically).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.files import sha256_file
from orchestrator.release.artifact import release_id
from orchestrator.tools.cargo import find_cargo
from orchestrator.tools.process import run_command
from tests.support.project import REPO

EXAMPLE = REPO / "examples" / "hello-service"
#: the binary, relative to a build's directory
BINARY = Path("target") / "release" / "hello-service"
CARGO_TIMEOUT = 1200


def copy_example(dest: Path, version: str, *, fix_tests: bool) -> Path:
    """Copy the example's sources into `dest` with `version`; `fix_tests` updates the version its
    own tests expect too (without it, `cargo test` of a bumped copy fails)."""
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


def build_example(project: Path, *features: str) -> Path:
    """`cargo build --release --offline` of a copy (with `features`); returns the binary."""
    argv = [str(find_cargo()), "build", "--release", "--offline", "--manifest-path", str(project / "Cargo.toml")]
    if features:
        argv += ["--features", ",".join(features)]
    run_command(argv, cwd=project, timeout=CARGO_TIMEOUT)
    return project / BINARY


def build_version(base: Path, name: str, version: str, *features: str) -> Path:
    """Copy the example to base/name with `version`, build it with `features`; returns the binary."""
    return build_example(copy_example(base / name, version, fix_tests=False), *features)


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
    """What `hello_builds` gives: three builds, and a project whose tests fail."""

    v1: Build
    v2: Build
    broken: Build
    untested: Path


def build_hello(base: Path) -> Builds:
    """v1, v2, broken and untested under `base` (see the module's docstring)."""
    v1 = copy_example(base / "v1", "0.1.0", fix_tests=False)
    v2 = copy_example(base / "v2", "0.2.0", fix_tests=True)
    broken = copy_example(base / "broken", "0.1.0", fix_tests=False)
    untested = copy_example(base / "untested", "0.3.0", fix_tests=False)
    build_example(v1)
    build_example(v2)
    build_example(broken, "broken")
    return Builds(v1=Build(v1, "0.1.0"), v2=Build(v2, "0.2.0"), broken=Build(broken, "0.1.0"), untested=untested)


@dataclass(frozen=True)
class TrafficBuilds:
    """What `traffic_builds` gives: binaries of three good releases and a flaky one."""

    v1: Path
    v2: Path
    v3: Path
    flaky: Path


def build_traffic(base: Path) -> TrafficBuilds:
    """v1, v2, v3 and flaky under `base` (see the module's docstring)."""
    return TrafficBuilds(v1=build_version(base, "v1", "0.1.0"), v2=build_version(base, "v2", "0.2.0"),
                         v3=build_version(base, "v3", "0.3.0"), flaky=build_version(base, "flaky", "0.4.0", "flaky"))


LEDGER = REPO / "examples" / "ledger-service"


@dataclass(frozen=True)
class LedgerBundles:
    """Release bundles of examples/ledger-service (make-bundle.sh): three good releases (0.1.0, builds
    `a`, `b` and `c`: different binaries), one whose /ready answers 500 (`broken`), one whose
    `ledgerd migrate` fails (`failmigrate`)."""

    a: Path
    b: Path
    c: Path
    broken: Path
    failmigrate: Path


def make_ledger_bundle(base: Path, name: str, *features: str, build_id: str | None = None) -> Path:
    """`make-bundle.sh [--features F] base/NAME.tar.gz` with its own target dir per feature set."""
    target = base / ("target-" + ("-".join(features) or "plain"))
    env = {"CARGO_TARGET_DIR": str(target), "LEDGER_BUILD_ID": build_id or name, "CARGO": str(find_cargo())}
    out = base / f"{name}.tar.gz"
    run_command([str(LEDGER / "make-bundle.sh"), *(["--features", ",".join(features)] if features else []), str(out)],
                env=env, timeout=CARGO_TIMEOUT)
    return out


def build_ledger(base: Path) -> LedgerBundles:
    """The bundles of LedgerBundles under `base`."""
    base.mkdir(parents=True, exist_ok=True)
    return LedgerBundles(a=make_ledger_bundle(base, "ledger-a"), b=make_ledger_bundle(base, "ledger-b"),
                         c=make_ledger_bundle(base, "ledger-c"),
                         broken=make_ledger_bundle(base, "ledger-broken", "broken"),
                         failmigrate=make_ledger_bundle(base, "ledger-failmigrate", "failmigrate"))
