"""Artifact intake: turn `--release PATH` into a staged, content-addressed release.

`PATH` is either a built binary or a cargo project directory. A project is tested
(`cargo test --offline`) and built (`cargo build --release --offline`) first; a failure of
either refuses the release before any host is touched. The release id is deterministic,
`<version>-<first 12 hex of the binary's sha256>`, so the same binary deployed twice is the
same release and the second deploy is a no-op.

The binary is staged under `.orchestrate/<env>/artifacts/<id>/<service>` (installed under the
service's name) next to a `RELEASE` file (json: id, version, sha256, source).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import LoadedEnvironment
from orchestrator.errors import CommandError, OrchestratorError, UsageError
from orchestrator.files import sha256_file
from orchestrator.tools.process import run_command, which

#: how long one cargo step may take on a 2-core machine
CARGO_TIMEOUT = 1800
DEFAULT_VERSION = "0.0.0"
RELEASE_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]*-[0-9a-f]{12}$")

LineSink = Callable[[str], None]


class ReleaseError(OrchestratorError):
    """The release could not be built, tested or staged (exit 1): nothing was deployed."""


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


def cargo_version(manifest: Path) -> str:
    """`package.version` of a Cargo.toml; DEFAULT_VERSION when absent or unreadable."""
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return DEFAULT_VERSION
    version = data.get("package", {}).get("version")
    return str(version) if isinstance(version, str) and version else DEFAULT_VERSION


def version_for_binary(binary: Path) -> str:
    """Version of a prebuilt binary: the Cargo.toml of the project it was built in, if any.

    A cargo build puts the binary at `<project>/target/<profile>/<name>`, so the manifest
    is three directories up from the file (two above its directory).
    """
    parents = binary.resolve().parents
    if len(parents) > 2 and (parents[2] / "Cargo.toml").is_file():
        return cargo_version(parents[2] / "Cargo.toml")
    return DEFAULT_VERSION


def cargo_argv(cargo: Path, step: str, manifest: Path) -> list[str]:
    """argv of one cargo step (`test` or `build`) for the project of `manifest`, offline."""
    if step == "test":
        return [str(cargo), "test", "--offline", "--manifest-path", str(manifest)]
    # json messages name the executable wherever CARGO_TARGET_DIR points; diagnostics stay readable
    return [str(cargo), "build", "--release", "--offline", "--manifest-path", str(manifest),
            "--message-format=json-render-diagnostics"]


def executables_from_messages(stdout: str) -> list[Path]:
    """Executables that `cargo build --message-format=json` reports, in order."""
    found: list[Path] = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            found.append(Path(message["executable"]))
    return found


def find_cargo() -> Path:
    """The cargo program: on PATH, else ~/.cargo/bin/cargo (rustup's default)."""
    found = which("cargo")
    if found is not None:
        return found
    candidate = Path.home() / ".cargo" / "bin" / "cargo"
    if candidate.exists():
        return candidate
    raise ReleaseError("cargo not found on PATH or in ~/.cargo/bin (install a Rust toolchain, see `make up`)")


def build_project(project: Path, *, on_output: LineSink | None = None,
                  env: dict[str, str] | None = None) -> Path:
    """Test then build the cargo project at `project`; return the path of its binary.

    Raises ReleaseError naming the step that failed (tests or build) with the output tail.
    """
    manifest = project / "Cargo.toml"
    cargo = find_cargo()
    for step in ("test", "build"):
        try:
            result = run_command(cargo_argv(cargo, step, manifest), cwd=project, env=env,
                                 timeout=CARGO_TIMEOUT, on_stderr=on_output)
        except CommandError as exc:
            what = "its tests failed" if step == "test" else "the build failed"
            raise ReleaseError(
                f"release refused, nothing deployed: `cargo {step}` in {project}: {what}",
                hint=exc.output_tail or None,
            ) from exc
    executables = executables_from_messages(result.stdout)
    if not executables:
        raise ReleaseError(f"`cargo build` in {project} produced no executable (is there a [[bin]] target?)")
    if len(executables) > 1:
        names = ", ".join(p.name for p in executables)
        raise ReleaseError(f"`cargo build` in {project} produced several executables ({names}); "
                           "pass the one to deploy as --release PATH")
    return executables[0]


def prepare_release(loaded: LoadedEnvironment, path: Path, *, on_output: LineSink | None = None,
                    build_env: dict[str, str] | None = None) -> Release:
    """Build (when `path` is a cargo project), hash and stage a release for `loaded`.

    Bad paths are a UsageError (exit 2); a failing build or test run is a ReleaseError (exit 1).
    """
    path = path.expanduser()
    if not path.exists():
        raise UsageError(f"--release {path}: no such file or directory")
    if path.is_dir():
        manifest = path / "Cargo.toml"
        if not manifest.is_file():
            raise UsageError(f"--release {path}: a directory must be a cargo project (no Cargo.toml in it)")
        binary = build_project(path, on_output=on_output, env=build_env)
        version = cargo_version(manifest)
    else:
        if not os.access(path, os.X_OK):
            raise UsageError(f"--release {path}: not an executable file (chmod +x, or pass the cargo project)")
        binary = path
        version = version_for_binary(path)
    digest = sha256_file(binary)
    rid = release_id(version, digest)
    return stage(loaded, binary, Release(id=rid, version=version, sha256=digest, binary=binary, source=path))


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
