"""`monitoring.logs` of the environment file: defaults, sizes and ages, errors by file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.loader import Project
from orchestrator.config.types import parse_size
from orchestrator.errors import ConfigError

BASE = ("name: x\ntarget: local\nterraform:\n  module: local_fleet\n  vars:\n    host_prefix: x\n"
        "    bridge: br-x\n    subnet: 10.213.9.0/24\nservice:\n  name: hello\nmonitoring:\n  logs:\n")


def load(tmp_path: Path, logs: str) -> Project:
    env_dir = tmp_path / "inventories" / "x"
    env_dir.mkdir(parents=True, exist_ok=True)
    (env_dir / "environment.yml").write_text(BASE + logs)
    return Project(tmp_path)


@pytest.mark.parametrize(("text", "size"), [("1", 1), ("512M", 512 * 1024**2), ("1G", 1024**3), ("2T", 2 * 1024**4)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1g", "1.5G", "G", "-1G", "1 G", "1GB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size such as 512M, 1G, 2T"):
        parse_size(text)


def test_defaults_keep_a_gigabyte_for_thirty_days(tmp_path: Path) -> None:
    logs = load(tmp_path, "    enabled: true\n").load("x").env.monitoring.logs
    assert (logs.enabled, logs.max_size, logs.max_age) == (True, "1G", "30d")


def test_values_are_read(tmp_path: Path) -> None:
    logs = load(tmp_path, "    max_size: 2G\n    max_age: 2w\n    enabled: false\n").load("x").env.monitoring.logs
    assert (logs.enabled, logs.max_size, logs.max_age) == (False, "2G", "2w")


@pytest.mark.parametrize(("logs", "line", "message"), [
    ("    max_size: 1GB\n", 13, "monitoring.logs.max_size: '1GB' is not a size of at least 1M such as 512M, 1G, 2T"),
    ("    enabled: true\n    max_size: 100K\n", 14,
     "monitoring.logs.max_size: '100K' is not a size of at least 1M such as 512M, 1G, 2T"),
    ("    max_age: 30 days\n", 13, "monitoring.logs.max_age: '30 days' is not a duration such as 500ms, 30s, 5m, 1h"),
    ("    max_age: 30m\n", 13, "monitoring.logs.max_age: '30m' must be at least 1h"),
    ("    keep: 3\n", 13, "monitoring.logs.keep: unknown key 'keep' (valid keys: enabled, max_size, max_age)"),
])
def test_mistakes_name_the_file_the_line_and_the_field(tmp_path: Path, logs: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, logs).load("x")
    assert str(info.value) == f"inventories/x/environment.yml:{line}: {message}"


def test_the_shipped_dev_environment_sets_its_own_retention() -> None:
    logs = Project(Path(__file__).resolve().parents[2]).load("dev").env.monitoring.logs
    assert (logs.enabled, logs.max_size, logs.max_age) == (True, "512M", "7d")
