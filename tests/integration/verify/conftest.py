"""Fixtures of the verify/graph integration tests: a moto server like the Terraform suite's
(tests/support/aws.py) and copies of the project."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.aws import apply_aws_variables, moto_server, reset_moto
from tests.support.project import PLANS, copy_project

#: what a project copy needs (code comes from the venv)
VERIFY_PARTS = ("inventories", "terraform", "roles", "playbooks")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto server on a free loopback port, for the whole session."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A freshly reset moto server and the AWS environment variables pointing at it."""
    reset_moto(moto_endpoint)
    apply_aws_variables(monkeypatch, moto_endpoint)
    return moto_endpoint


@pytest.fixture(scope="module")
def shared_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One untouched project copy for a whole module (read-only tests share its caches)."""
    return copy_project(tmp_path_factory.mktemp("verify") / "project", parts=VERIFY_PARTS)


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    """A copy of the terraform_data-only root behind tests/fixtures/plans/plan.json."""
    root = tmp_path / "root"
    shutil.copytree(PLANS / "root", root)
    return root
