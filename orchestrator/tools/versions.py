"""The version of an external program as one line, for the record of what checked a release."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from orchestrator.errors import CommandError
from orchestrator.tools.process import run_command

#: `--version` of the slowest of them (ansible-lint) takes about half a second
TIMEOUT = 60.0


def first_line(text: str) -> str:
    """The first line of `text` that is not a warning (ansible-lint warns about PATH first)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.upper().startswith("WARNING"):
            return line
    return ""


def short(line: str) -> str:
    """`clippy 0.1.95 (59807616e1 2026-04-14)` -> `clippy 0.1.95`; `promtool, version 2.42.0+ds (branch: ...)`
    -> `promtool 2.42.0+ds`; `ansible-lint 26.10.1 using ansible-core:2.19.14 ...` -> `ansible-lint 26.10.1`."""
    line = re.sub(r"\s*\([^)]*\)", "", line.split(" using ")[0])
    return re.sub(r",? version ", " ", line).strip()


def program_version(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
    """The first line `argv` (e.g. `terraform version`) prints; "unknown (...)" when it cannot run."""
    try:
        result = run_command(list(argv), env=env, timeout=TIMEOUT, check=False)
    except CommandError as exc:
        return f"unknown ({exc.message})"
    line = first_line(result.stdout) or first_line(result.stderr)
    return short(line) if line else f"unknown (exit {result.returncode})"


def remembered_version(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
    """`program_version(argv)`, remembered by the program's file (path, size, modification time), for
    a program slow to ask: `ansible-lint --version` starts Python and imports Ansible (half a second on
    every release gate). Not for a launcher whose file stays the same when what it runs changes (the
    rustup proxies `cargo`, `rustc`)."""
    from pathlib import Path

    from orchestrator.tools.clean_results import ResultKey, remember, remembered

    program = Path(argv[0])
    if not program.is_absolute() or not program.is_file():
        return program_version(argv, env=env)
    key = ResultKey("version").tool(program).text("\0".join(argv[1:])).hexdigest()
    seen = remembered("version", key)
    if seen:
        return seen
    version = program_version(argv, env=env)
    if not version.startswith("unknown"):
        remember("version", key, version)
    return version
