"""`orchestrate hosts ENV`: the JSON contract and the aws refusal (no hosts booted here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli

REPO = Path(__file__).resolve().parents[3]


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(REPO / "inventories", project / "inventories")
    return project


def test_hosts_json_lists_planned_hosts_as_missing(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "dev", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["env"] == "dev"
    assert [(h["name"], h["address"], h["groups"], h["state"]) for h in payload["hosts"]] == [
        ("dev-app-1", "10.213.10.10", ["app"], "missing"),
        ("dev-app-2", "10.213.10.11", ["app"], "missing"),
        ("dev-app-3", "10.213.10.12", ["app"], "missing"),
        ("dev-mon-1", "10.213.10.13", ["monitoring"], "missing"),
    ]


def test_recorded_host_without_launcher_is_stopped(tmp_path: Path) -> None:
    project = _project(tmp_path)
    host_dir = project / ".orchestrate" / "dev" / "hosts" / "dev-app-2"
    host_dir.mkdir(parents=True)
    (host_dir / "host.json").write_text(json.dumps({
        "name": "dev-app-2", "address": "10.213.10.11", "groups": ["app"], "bridge": "orch-dev",
        "subnet": "10.213.10.0/24", "lowerdir": "/nonexistent",
    }))
    (host_dir / "supervisor.pid").write_text("999999999\n")
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "dev", "--json"])
    assert result.exit_code == 0, result.output
    states = {h["name"]: h["state"] for h in json.loads(result.stdout)["hosts"]}
    assert states == {"dev-app-1": "missing", "dev-app-2": "stopped", "dev-app-3": "missing", "dev-mon-1": "missing"}


def test_hosts_refuses_aws_environments_with_exit_2(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "prod", "--json"])
    assert result.exit_code == 2
    assert "not available for target 'aws'" in result.output


def test_hosts_unknown_env_is_bad_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(_project(tmp_path)), "hosts", "nope"])
    assert result.exit_code == 2
