"""Helpers of the verify/graph integration tests (a module of its own: conftest is not importable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PLANS = REPO / "tests" / "fixtures" / "plans"
ORCHESTRATE = Path(sys.executable).parent / "orchestrate"


def orchestrate(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `orchestrate --project-dir PROJECT ARGS...` as an operator would (no terminal)."""
    return subprocess.run([str(ORCHESTRATE), "--project-dir", str(project), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, env=dict(os.environ), timeout=timeout, check=False)
