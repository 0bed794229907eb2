"""Fixtures of the Terraform integration tests: a moto server (tests/support/aws.py) and the
`orchestrate` command line (tests/support/cli.py).

`moto_endpoint` starts moto's server (tests/support/moto_serial.py) once per session on a free port;
`aws_env` resets it (POST /moto-api/reset) and sets the AWS credentials (test values only)
and ORCHESTRATE_AWS_ENDPOINT for one test; `aws_project` adds a copy of the project.
`run_orchestrate(project, *args)` runs the real console script in a subprocess, as an operator would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import cli
from tests.support.aws import SECRET_KEY, apply_aws_variables, boto, moto_server, reset_moto
from tests.support.project import copy_project


@pytest.fixture(scope="session")
def moto_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's moto server log: one line per request (tests/support/moto_serial.py)."""
    return tmp_path_factory.mktemp("moto") / "moto.log"


@pytest.fixture(scope="session")
def moto_endpoint(moto_log: Path) -> Iterator[str]:
    """URL of a moto server on a free loopback port, for the whole session."""
    with moto_server(moto_log) as endpoint:
        yield endpoint


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


@pytest.fixture(scope="session")
def run_orchestrate() -> Callable[..., Any]:
    """`run_orchestrate(project, *args, env=None, timeout=600) -> CompletedProcess` (tests/support/cli.py)."""
    return cli.run_orchestrate


@pytest.fixture(scope="session")
def spawn() -> Callable[..., Any]:
    """`spawn(project, *args) -> Popen`: orchestrate in the background (tests/support/cli.py)."""
    return cli.spawn_orchestrate


@pytest.fixture(scope="session")
def aws(moto_endpoint: str) -> Callable[[str], Any]:
    """`aws(service)`: a boto3 client of the session's moto server."""
    return lambda service: boto(service, moto_endpoint)


@pytest.fixture(scope="session")
def secret_key() -> str:
    """The AWS secret key the tests use (it must never reach the disk)."""
    return SECRET_KEY


@pytest.fixture(scope="module")
def module_aws_project(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Like `aws_project`, for a whole module: moto reset once, a project copy shared by its tests."""
    project = copy_project(tmp_path_factory.mktemp("stack") / "project", parts=("inventories", "terraform"))
    with pytest.MonkeyPatch.context() as mp:
        reset_moto(moto_endpoint)
        apply_aws_variables(mp, moto_endpoint)
        yield project
