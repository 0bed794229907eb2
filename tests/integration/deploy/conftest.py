"""Builds of the example service shared by the deploy tests (built once per session).

v1 is the example project as it is (0.1.0), v2 the same with its version bumped to 0.2.0,
`broken` v1 built with the `broken` feature (/healthz answers 500), and `untested` a v2 whose
own tests fail (its version was bumped without updating them). Each is a copy of the project in a
session temp dir with its own target/, so `--release DIR/target/release/hello-service` finds the
project's Cargo.toml two levels up.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.release import find_cargo, release_id, sha256_file
from orchestrator.tools.process import run_command

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "hello-service"
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
