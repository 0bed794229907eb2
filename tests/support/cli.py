"""`orchestrate` run as an operator, a script or cron runs it: the venv's console script in a
subprocess, `--project-dir` before the verb, no terminal (stdin closed), output captured.

    code, data, err = orchestrate(project, "status", "dev")       # `--json` added, stdout parsed
    proc = run_orchestrate(project, "validate", "dev")            # CompletedProcess, human output
    proc = spawn_orchestrate(project, "up", "dev", "--yes")       # in the background (Popen)

Every variant runs with the test process's environment plus ORCHESTRATE_VAULT_PASSWORD_FILE
pointing at the project's dev vault password (public on purpose) when the project has one, and
`env` on top.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

#: the console script of the venv the tests run in
ORCHESTRATE = Path(sys.executable).parent / "orchestrate"
#: long enough for a deploy to a few hosts on a busy two-core machine; shorter than pytest's own
#: timeout, so a hung command fails its test and the fixtures still tear the hosts down
DEFAULT_TIMEOUT = 600.0
VAULT_PASSWORD_ENV = "ORCHESTRATE_VAULT_PASSWORD_FILE"


def orchestrate_argv(project_dir: Path, *args: str) -> list[str]:
    """`orchestrate --project-dir PROJECT ARGS...` as an argv."""
    return [str(ORCHESTRATE), "--project-dir", str(project_dir), *args]


def cli_env(project_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a run: ours, the project's dev vault password file when it has one, `extra`."""
    env = dict(os.environ)
    password = Path(project_dir) / "inventories" / "dev" / ".vault-password-dev"
    if password.exists():
        env[VAULT_PASSWORD_ENV] = str(password)
    env.update(extra or {})
    return env


def run_orchestrate(project_dir: Path, *args: str, env: Mapping[str, str] | None = None,
                    timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run `orchestrate --project-dir PROJECT ARGS...` to the end; never raises on an exit code."""
    return subprocess.run(orchestrate_argv(project_dir, *args), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=cli_env(project_dir, env), timeout=timeout, check=False)


def orchestrate(project_dir: Path, *args: str, env: Mapping[str, str] | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> tuple[int, dict[str, Any], str]:
    """Run `orchestrate --project-dir PROJECT ARGS... --json`: (exit code, the JSON on stdout, stderr).

    Empty stdout gives `{}`; anything else that is not a JSON object fails the test.
    """
    proc = run_orchestrate(project_dir, *args, "--json", env=env, timeout=timeout)
    if not proc.stdout.strip():
        return proc.returncode, {}, proc.stderr
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{' '.join(args)}: not JSON on stdout: {proc.stdout!r}\nstderr: {proc.stderr}")
    if not isinstance(data, dict):
        pytest.fail(f"{' '.join(args)}: expected a JSON object on stdout, got {proc.stdout!r}")
    return proc.returncode, data, proc.stderr


def spawn_orchestrate(project_dir: Path, *args: str, env: Mapping[str, str] | None = None,
                      **popen: Any) -> subprocess.Popen[str]:
    """Start `orchestrate --project-dir PROJECT ARGS...` in the background (stdin closed; stdout and
    stderr piped unless `popen` says otherwise)."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(orchestrate_argv(project_dir, *args), stdin=subprocess.DEVNULL, text=True,
                            env=cli_env(project_dir, env), **options)
