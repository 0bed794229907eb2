"""The environment model: shipped environments, durations, semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.loader import Project
from orchestrator.config.schema import TerraformAws, TerraformLocal
from orchestrator.config.types import parse_duration
from orchestrator.errors import ConfigError, UsageError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_environments_load() -> None:
    project = Project(REPO)
    assert project.environment_names() == ["dev", "prod", "staging"]
    dev = project.load("dev").env
    assert dev.target == "local" and isinstance(dev.terraform, TerraformLocal)
    assert dev.terraform.vars.app_count == 3 and dev.terraform.vars.monitoring_count == 1
    staging = project.load("staging").env
    assert staging.terraform.vars.app_count == 5 and staging.rollout.strategy == "canary"
    prod = project.load("prod").env
    assert prod.protected and isinstance(prod.terraform, TerraformAws)
    assert prod.terraform.backend.type == "s3"


def test_shipped_local_fleets_do_not_collide() -> None:
    project = Project(REPO)
    fleets = [e.env.terraform.vars for e in project.iter_environments() if isinstance(e.env.terraform, TerraformLocal)]
    assert len({f.bridge for f in fleets}) == len(fleets)
    assert len({f.subnet for f in fleets}) == len(fleets)
    assert len({f.host_prefix for f in fleets}) == len(fleets)


def test_unknown_environment_lists_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown environment 'qa'; known environments: dev, prod, staging"):
        Project(REPO).load("qa")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1.5s", "s", "5 m", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_line_of_points_at_the_field() -> None:
    loaded = Project(REPO).load("dev")
    text = loaded.path.read_text().splitlines()
    line = loaded.line_of("rollout", "strategy")
    assert line is not None and text[line - 1].strip().startswith("strategy:")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    from orchestrator.config.loader import load_environment_file

    with pytest.raises(ConfigError, match="file not found"):
        load_environment_file(tmp_path / "nope.yml", tmp_path)


def test_multiple_errors_are_all_reported(tmp_path: Path) -> None:
    env_dir = tmp_path / "inventories" / "x"
    env_dir.mkdir(parents=True)
    (env_dir / "environment.yml").write_text(
        "name: x\ntarget: local\nterraform:\n  module: local_fleet\n  vars:\n    host_prefix: x\n"
        "    bridge: br-x\n    subnet: 10.213.9.0/24\nservice:\n  name: hello\n  port: -1\nrollout:\n  strategy: x\n"
    )
    with pytest.raises(ConfigError) as info:
        Project(tmp_path).load("x")
    assert str(info.value) == "inventories/x/environment.yml:11: service.port: -1 must be at least 1"
    assert info.value.hint is not None and "rollout.strategy" in info.value.hint
