"""Helpers of the deploy suites: the CLI as a script runs it, and the hosts asked over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FleetEnv = Any
ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")


def orchestrate(fleet: FleetEnv, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `orchestrate --project-dir P VERB ENV ... --json`; return (exit code, JSON, stderr)."""
    env = dict(os.environ)
    password = fleet.project_dir / "inventories" / fleet.env_name / f".vault-password-{fleet.env_name}"
    if password.exists():
        env["ORCHESTRATE_VAULT_PASSWORD_FILE"] = str(password)
    verb, *rest = args
    proc = subprocess.run(
        [ORCHESTRATE, "--project-dir", str(fleet.project_dir), verb, fleet.env_name, *rest, "--json"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    try:
        data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        pytest.fail(f"not JSON on stdout: {proc.stdout!r}\nstderr: {proc.stderr}")
    return proc.returncode, data, proc.stderr



def versions(fleet: FleetEnv) -> dict[str, str]:
    """`version` from /version of every app host."""
    found = {}
    for host in fleet.group("app"):
        status, body = fleet.http_get(host.address, "/version")
        assert status == 200, f"{host.name}: /version answered {status}"
        found[host.name] = json.loads(body)["version"]
    return found
