"""Artifact intake: turn `--release PATH` into a staged, content-addressed release.

`PATH` is either a built binary or a cargo project directory. A project is tested
(`cargo test --offline`) and built (`cargo build --release --offline`) first; a failure of
either refuses the release before any host is touched. The release id is deterministic,
`<version>-<first 12 hex of the binary's sha256>`, so the same binary deployed twice is the
same release and the second deploy is a no-op.

The binary is staged under `.orchestrate/<env>/artifacts/<id>/<service>` (installed under the
service's name) next to a `RELEASE` file (json: id, version, sha256, source). The staged release is
then sealed (orchestrator.release.signing): its signed manifest, and for a cargo project its SBOM
(orchestrator.release.sbom), are recorded under `.orchestrate/<env>/releases/<id>/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.files import sha256_file
from orchestrator.tools.cargo import DEFAULT_VERSION, build_only, build_project, cargo_version

RELEASE_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]*-[0-9a-f]{12}$")


LineSink = Callable[[str], None]


@dataclass(frozen=True)
class Release:
    """A staged release, ready to ship."""

    id: str
    version: str
    sha256: str
    binary: Path
    """The staged copy of the binary (named after the service)."""
    source: Path
    """What the operator passed as --release."""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "sha256": self.sha256,
                "binary": str(self.binary), "source": str(self.source)}


def release_id(version: str, sha256: str) -> str:
    """`<version>-<first 12 hex of sha256>` (the contract of DESIGN.md)."""
    return f"{version}-{sha256[:12]}"


def is_release_id(text: str) -> bool:
    """Whether `text` looks like a release id (used to validate `rollback --to`)."""
    return bool(RELEASE_ID_RE.match(text))


def version_for_binary(binary: Path) -> str:
    """Version of a prebuilt binary: the Cargo.toml of the project it was built in, if any.

    A cargo build puts the binary at `<project>/target/<profile>/<name>`, so the manifest
    is three directories up from the file (two above its directory).
    """
    parents = binary.resolve().parents
    if len(parents) > 2 and (parents[2] / "Cargo.toml").is_file():
        return cargo_version(parents[2] / "Cargo.toml")
    return DEFAULT_VERSION


def prepare_release(loaded: LoadedEnvironment, path: Path, *, on_output: LineSink | None = None,
                    build_env: dict[str, str] | None = None, run_tests: bool = True) -> Release:
    """Build (when `path` is a cargo project), hash, stage and seal a release for `loaded`.

    `run_tests=False` when the release gates ran the project's tests already (`up`). Bad paths are a
    UsageError (exit 2); a failing build or test run is a ReleaseError (exit 1).
    """
    path = path.expanduser()
    if not path.exists():
        raise UsageError(f"--release {path}: no such file or directory")
    if path.is_dir():
        manifest = path / "Cargo.toml"
        if not manifest.is_file():
            raise UsageError(f"--release {path}: a directory must be a cargo project (no Cargo.toml in it)")
        binary = build_project(path, on_output=on_output, env=build_env, test=run_tests)
        version = cargo_version(manifest)
    else:
        if not os.access(path, os.X_OK):
            raise UsageError(f"--release {path}: not an executable file (chmod +x, or pass the cargo project)")
        binary = path
        version = version_for_binary(path)
    digest = sha256_file(binary)
    rid = release_id(version, digest)
    staged = stage(loaded, binary, Release(id=rid, version=version, sha256=digest, binary=binary, source=path))
    _seal(loaded, staged, project=path if path.is_dir() else None)
    return staged


def stage(loaded: LoadedEnvironment, binary: Path, release: Release) -> Release:
    """Copy `binary` to .orchestrate/<env>/artifacts/<id>/<service> (mode 0755) with a RELEASE file."""
    target_dir = loaded.paths.artifact(release.id)
    target = target_dir / loaded.env.service.name
    target_dir.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and sha256_file(target) == release.sha256):
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(binary, tmp)
        tmp.chmod(0o755)
        tmp.replace(target)
    staged = Release(id=release.id, version=release.version, sha256=release.sha256, binary=target,
                     source=release.source)
    meta = {"id": staged.id, "version": staged.version, "sha256": staged.sha256, "source": str(staged.source)}
    (target_dir / "RELEASE").write_text(json.dumps(meta, indent=2) + "\n")
    return staged


def _seal(loaded: LoadedEnvironment, release: Release, *, project: Path | None) -> None:
    """Sign the staged release's manifest, with the SBOM of the cargo project it was built from."""
    from orchestrator.release.sbom import sbom_for_project
    from orchestrator.release.signing import Staged, seal

    def sbom() -> str:
        assert project is not None
        return sbom_for_project(project, release_id=release.id, binary_sha256=release.sha256, env=loaded.name)

    seal(loaded, Staged(id=release.id, version=release.version, directory=release.binary.parent,
                        source=release.source), sbom=sbom if project is not None else None)


def peek_release_id(path: Path) -> str:
    """Release id of `path` without running its tests: an incremental cargo build, then sha256.

    Used only to decide whether a run would change anything; a real deploy still tests.
    """
    if path.is_dir():
        manifest = path / "Cargo.toml"
        if not manifest.exists():
            raise UsageError(f"--release {path}: a directory must be a cargo project (no Cargo.toml in it)")
        return release_id(cargo_version(manifest), sha256_file(build_only(path)))
    return release_id(version_for_binary(path), sha256_file(path))
