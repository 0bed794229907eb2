"""cargo, the Rust build tool: offline test and build of a project, its version, its executable; the
release gates' `cargo fmt --check`, `cargo clippy` and `cargo test`, with their findings; `cargo metadata`."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from orchestrator.errors import CommandError, ReleaseError, UsageError
from orchestrator.tools.process import CommandResult, LineCallback, run_command, which

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
                  env: dict[str, str] | None = None, test: bool = True) -> Path:
    """Test (unless `test` is false: the release gates ran the tests) then build the cargo project at
    `project`; return the path of its binary.

    Raises ReleaseError naming the step that failed (tests or build) with the output tail.
    """
    manifest = project / "Cargo.toml"
    cargo = find_cargo()
    for step in ("test", "build") if test else ("build",):
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


# --- the release gates: cargo fmt, clippy and test, and what they found ---------------------------

#: plain output for parsing, and panics without backtraces (a finding is one readable line)
GATE_ENV = {"CARGO_TERM_COLOR": "never", "RUST_BACKTRACE": "0"}


def fmt_check_argv(cargo: Path, manifest: Path) -> list[str]:
    """argv of `cargo fmt --check` (rustfmt's diff names each file and line it would change)."""
    return [str(cargo), "fmt", "--check", "--manifest-path", str(manifest), "--", "--color", "never"]


def clippy_argv(cargo: Path, manifest: Path) -> list[str]:
    """argv of `cargo clippy --all-targets -- -D warnings`, offline, diagnostics as JSON messages."""
    return [str(cargo), "clippy", "--offline", "--all-targets", "--manifest-path", str(manifest),
            "--message-format=json", "--", "-D", "warnings"]


def test_argv(cargo: Path, manifest: Path) -> list[str]:
    """argv of `cargo test`, offline (as a release build tests), compiler messages as JSON."""
    return [str(cargo), "test", "--offline", "--manifest-path", str(manifest), "--message-format=json"]


def metadata_argv(cargo: Path, manifest: Path) -> list[str]:
    """argv of `cargo metadata` (every package of the resolved graph), offline."""
    return [str(cargo), "metadata", "--format-version", "1", "--offline", "--manifest-path", str(manifest)]


def version_argv(cargo: Path, tool: str | None = None) -> list[str]:
    """argv printing the version of cargo, or of one of its tools (`fmt`, `clippy`)."""
    return [str(cargo), *([tool] if tool else []), "--version"]


def run_gate(project: Path, argv: list[str], *, timeout: float = CARGO_TIMEOUT) -> CommandResult:
    """Run one gate's cargo command in `project`; its exit code is the verdict, not an error."""
    return run_command(argv, cwd=project, env=GATE_ENV, timeout=timeout, check=False)


def metadata(project: Path) -> dict[str, Any]:
    """`cargo metadata` of the project at `project` (ReleaseError when cargo cannot resolve it offline)."""
    project = project.resolve()
    try:
        result = run_command(metadata_argv(find_cargo(), project / "Cargo.toml"), cwd=project, env=GATE_ENV,
                             timeout=CARGO_TIMEOUT)
    except CommandError as exc:
        raise ReleaseError(f"`cargo metadata` in {project} failed", hint=exc.output_tail or None) from exc
    data = json.loads(result.stdout)
    if not isinstance(data, dict):
        raise ReleaseError(f"`cargo metadata` in {project} printed no JSON object")
    return data


def _relative(path: str, project: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(project.resolve()))
    except ValueError:
        return path


_FMT_DIFF = re.compile(r"^Diff in (?P<file>.+?)(?: at line |:)(?P<line>\d+):?\s*$")


def unformatted(output: str, project: Path) -> list[str]:
    """`file:line: not formatted` for every place `cargo fmt --check` shows a diff for."""
    found = []
    for line in output.splitlines():
        match = _FMT_DIFF.match(line.strip())
        if match:
            found.append(f"{_relative(match.group('file'), project)}:{match.group('line')}: not formatted "
                         "(run `cargo fmt`)")
    return list(dict.fromkeys(found))


def diagnostics(stdout: str) -> list[str]:
    """`file:line:col: level: message [lint]` for the warnings and errors among cargo's JSON messages.

    A diagnostic of a file compiled for several targets (the binary and its tests) appears once.
    """
    found = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") != "compiler-message":
            continue
        diagnostic = message.get("message") or {}
        if diagnostic.get("level") not in ("error", "warning"):
            continue
        spans = [s for s in diagnostic.get("spans") or [] if s.get("is_primary")]
        where = f"{spans[0]['file_name']}:{spans[0]['line_start']}:{spans[0]['column_start']}: " if spans else ""
        code = (diagnostic.get("code") or {}).get("code")
        found.append(f"{where}{diagnostic['level']}: {diagnostic.get('message', '')}" + (f" [{code}]" if code else ""))
    return list(dict.fromkeys(found))


_TEST_FAILED = re.compile(r"^test (?P<name>\S+) \.\.\. FAILED$")
_FAILURE_HEAD = re.compile(r"^---- (?P<name>\S+) stdout ----$")


def failed_tests(output: str, *, max_lines: int = 4) -> list[str]:
    """`test NAME failed: <first lines of its panic>` for every failed test in `cargo test`'s output."""
    names = [m.group("name") for m in map(_TEST_FAILED.match, output.splitlines()) if m]
    messages: dict[str, list[str]] = {}
    current: str | None = None
    for line in output.splitlines():
        head = _FAILURE_HEAD.match(line)
        if head:
            current = head.group("name")
            messages[current] = []
            continue
        if current is None:
            continue
        if line.startswith(("failures:", "---- ", "note: run with")):
            current = None
            continue
        text = line.strip()
        if text:
            # "thread 'x' (123) panicked at src/app.rs:187:9:" -> "panicked at src/app.rs:187:9:"
            messages[current].append(re.sub(r"^thread '.*?'(?: \(\d+\))? ", "", text))
    found = []
    for name in dict.fromkeys(names):
        lines = messages.get(name, [])[:max_lines]
        found.append(f"test {name} failed" + (": " + " | ".join(lines) if lines else ""))
    return found
