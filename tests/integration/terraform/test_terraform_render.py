"""The rendered roots and the aws_fleet module are `terraform fmt` clean (real terraform binary)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.loader import Project
from orchestrator.fleet.render import AWS_ENDPOINT_ENV, render_environment
from orchestrator.tools.terraform import fmt_check


@pytest.mark.integration
@pytest.mark.parametrize("env_name", ["prod", "dev", "staging"])
def test_rendered_roots_and_modules_are_terraform_fmt_clean(
    project_copy: Path, monkeypatch: pytest.MonkeyPatch, env_name: str
) -> None:
    monkeypatch.setenv(AWS_ENDPOINT_ENV, "http://127.0.0.1:4566")
    result = render_environment(Project(project_copy).load(env_name))
    assert fmt_check(result.terraform_dir) == []
    assert fmt_check(project_copy / "terraform" / "modules" / "aws_fleet") == []
