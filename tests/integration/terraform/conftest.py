"""A moto server (a real HTTP AWS endpoint) for the Terraform integration tests.

`moto_endpoint` starts `moto_server -H 127.0.0.1 -p PORT` once per session on a free port;
`aws_env` resets it (POST /moto-api/reset) and sets the AWS credentials (test values only)
and ORCHESTRATE_AWS_ENDPOINT for one test; `aws_project` adds a copy of the project.
`orchestrate(...)` runs the real console script in a subprocess, as an operator would.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from orchestrator.fleet.render import AWS_ENDPOINT_ENV

VENV_BIN = Path(sys.executable).parent
ORCHESTRATE = VENV_BIN / "orchestrate"
REGION = "eu-west-1"
#: a recognisable secret: tests assert it is never written to disk
SECRET_KEY = "moto-secret-" + secrets.token_hex(8)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reset_moto(endpoint: str) -> None:
    """Forget every resource the moto server holds."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        assert response.status == 200


def aws_variables(endpoint: str) -> dict[str, str]:
    """Environment of a test run against moto: throwaway credentials and the endpoint override."""
    return {
        "AWS_ACCESS_KEY_ID": "AKIAORCHESTRATETEST",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        AWS_ENDPOINT_ENV: endpoint,
    }


def apply_aws_variables(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    for name, value in aws_variables(endpoint).items():
        mp.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        mp.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto server on a free loopback port, for the whole session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on port {port}:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A freshly reset moto server and the AWS environment variables pointing at it."""
    reset_moto(moto_endpoint)
    apply_aws_variables(monkeypatch, moto_endpoint)
    return moto_endpoint


@pytest.fixture
def aws_project(aws_env: str, project_copy: Path) -> Path:
    """A copy of the project, with moto reset and the AWS variables set."""
    return project_copy


def boto(service: str, endpoint: str) -> Any:
    """A boto3 client of moto with the test credentials."""
    import boto3

    return boto3.client(service, region_name=REGION, endpoint_url=endpoint,
                        aws_access_key_id="AKIAORCHESTRATETEST", aws_secret_access_key=SECRET_KEY)


def orchestrate(project: Path, *args: str, env: Mapping[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `orchestrate --project-dir PROJECT ARGS...` without a terminal (stdin closed)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(ORCHESTRATE), "--project-dir", str(project), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, env=full_env, timeout=timeout, check=False)


def spawn_orchestrate(project: Path, *args: str) -> subprocess.Popen[str]:
    """Start `orchestrate` in the background (stdin closed, output captured)."""
    return subprocess.Popen([str(ORCHESTRATE), "--project-dir", str(project), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


@pytest.fixture(scope="session")
def run_orchestrate() -> Any:
    """`orchestrate(project, *args)` as a fixture (see `orchestrate`)."""
    return orchestrate


@pytest.fixture(scope="session")
def spawn() -> Any:
    """`spawn_orchestrate(project, *args)` as a fixture."""
    return spawn_orchestrate


@pytest.fixture(scope="session")
def aws(moto_endpoint: str) -> Any:
    """`aws(service)`: a boto3 client of the session's moto server."""
    return lambda service: boto(service, moto_endpoint)


@pytest.fixture(scope="session")
def secret_key() -> str:
    """The AWS secret key the tests use (it must never reach the disk)."""
    return SECRET_KEY


@pytest.fixture(scope="module")
def module_aws_project(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Like `aws_project`, for a whole module: moto reset once, a project copy shared by its tests."""
    import shutil

    repo = Path(__file__).resolve().parents[3]
    project = tmp_path_factory.mktemp("stack") / "project"
    for part in ("inventories", "terraform"):
        shutil.copytree(repo / part, project / part, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    with pytest.MonkeyPatch.context() as mp:
        reset_moto(moto_endpoint)
        apply_aws_variables(mp, moto_endpoint)
        yield project
