"""What a prebuilt executable says about itself: `BINARY --version`, run on the controller.

The release intake asks a binary for its version when nothing better names it (no `--version`
option, no bundle VERSION file). The binary runs with no input, in an empty directory, with a
bounded time: a program that ignores `--version` and starts serving is stopped and says nothing.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from orchestrator.errors import CommandError
from orchestrator.tools.process import run_command

#: seconds `BINARY --version` may take
VERSION_TIMEOUT = 5.0


#: a version word: 1.2, 1.2.3, v1.2.3, 1.2.3-rc.1, 1.2.3+build5 (a trailing `,;)` is not part of it)
_VERSION_RE = re.compile(r"v?(\d+(?:\.\d+)+(?:[-+][0-9A-Za-z][0-9A-Za-z.+_-]*)?)")


def version_argv(binary: Path) -> list[str]:
    """`BINARY --version`."""
    return [str(binary), "--version"]


def version_in_output(text: str) -> str | None:
    """The version in `--version` output (pure): the last word of its first non-empty line that looks
    like a version (`hello-service 0.1.0 (build dev)` -> `0.1.0`), else None."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    for word in reversed(lines[0].split()):
        match = _VERSION_RE.fullmatch(word.strip("()[],;:'\""))
        if match:
            return match.group(1)
    return None


def reported_version(binary: Path) -> str | None:
    """The version `binary --version` prints; None when it fails, runs too long or names none."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-version-") as scratch:
        try:
            result = run_command(version_argv(binary), cwd=scratch, timeout=VERSION_TIMEOUT, check=False,
                                 stop_signal=9, stop_grace=1.0)
        except (CommandError, OSError):
            return None
    if result.returncode != 0:
        return None
    return version_in_output(result.stdout) or version_in_output(result.stderr)
