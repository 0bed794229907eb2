"""Fixtures of the verify/graph integration tests.

The moto server fixtures are the Terraform suite's own (tests/integration/terraform/conftest.py),
loaded by path so that both suites start moto the same way.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from verify_support import PLANS, REPO

_TERRAFORM_CONFTEST = Path(__file__).resolve().parents[1] / "terraform" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_terraform_suite_fixtures", _TERRAFORM_CONFTEST)
assert _spec is not None and _spec.loader is not None
_terraform_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_terraform_fixtures)

moto_endpoint = _terraform_fixtures.moto_endpoint
aws_env = _terraform_fixtures.aws_env

#: what a project copy needs (code comes from the venv)
PROJECT_PARTS = ("inventories", "terraform", "roles", "playbooks")


def copy_parts(dest: Path) -> Path:
    """Copy the project's own files (no .orchestrate/ state) into `dest`."""
    for part in PROJECT_PARTS:
        if (REPO / part).exists():
            shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    return dest


@pytest.fixture(scope="module")
def shared_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One untouched project copy for a whole module (read-only tests share its caches)."""
    return copy_parts(tmp_path_factory.mktemp("verify") / "project")


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    """A copy of the terraform_data-only root behind tests/fixtures/plans/plan.json."""
    root = tmp_path / "root"
    shutil.copytree(PLANS / "root", root)
    return root
