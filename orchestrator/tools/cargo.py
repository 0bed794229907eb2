"""cargo, the Rust build tool: offline test and build of a project, its version, its executable."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from orchestrator.errors import CommandError, ReleaseError, UsageError
from orchestrator.tools.process import LineCallback, run_command, which

#: how long one cargo step may take on a 2-core machine
CARGO_TIMEOUT = 1800


def cargo_version(manifest: Path) -> str:
    """`package.version` of a Cargo.toml; DEFAULT_VERSION when absent or unreadable."""
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return DEFAULT_VERSION
    version = data.get("package", {}).get("version")
    return str(version) if isinstance(version, str) and version else DEFAULT_VERSION


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


def build_project(project: Path, *, on_output: LineCallback | None = None,
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


DEFAULT_VERSION = "0.0.0"


def build_only(project: Path) -> Path:
    """`cargo build` (incremental, no tests) of the project at `project`; the one executable it makes."""
    result = run_command(cargo_argv(find_cargo(), "build", project / "Cargo.toml"), cwd=project, timeout=CARGO_TIMEOUT)
    executables = executables_from_messages(result.stdout)
    if len(executables) != 1:
        raise UsageError(f"--release {project}: expected one executable from cargo, got {len(executables)}")
    return executables[0]
