"""`orchestrate hosts ENV`: the JSON contract and the aws refusal (no hosts booted here)."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config.loader import Project

REPO = Path(__file__).resolve().parents[3]


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(REPO / "inventories", project / "inventories")
    return project


def _dev_has_lb(project: Path) -> bool:
    fleet_vars = Project(project).load("dev").env.terraform.vars
    return getattr(fleet_vars, "lb_count", 0) == 1


def test_hosts_json_lists_planned_hosts_as_missing(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "dev", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert list(payload) == ["env", "bridge", "subnet", "hosts"]
    assert (payload["env"], payload["bridge"], payload["subnet"]) == ("dev", "orch-dev", "10.213.10.0/24")
    assert all(list(h) == ["name", "address", "groups", "state"] for h in payload["hosts"])
    lb = [("dev-lb-1", "10.213.10.14", ["lb"], "missing")] if _dev_has_lb(project) else []
    assert [(h["name"], h["address"], h["groups"], h["state"]) for h in payload["hosts"]] == [
        ("dev-app-1", "10.213.10.10", ["app"], "missing"),
        ("dev-app-2", "10.213.10.11", ["app"], "missing"),
        ("dev-app-3", "10.213.10.12", ["app"], "missing"),
        ("dev-mon-1", "10.213.10.13", ["monitoring"], "missing"),
        *lb,
    ]


def test_recorded_host_without_launcher_is_stopped(tmp_path: Path) -> None:
    project = _project(tmp_path)
    # a prefix no real fleet uses: the machine state is looked up by name, and `make up` leaves a
    # running dev fleet (dev-app-2 among them) on the machine where `make test` runs next
    prefix = "ut" + secrets.token_hex(3)
    env_file = project / "inventories" / "dev" / "environment.yml"
    env_file.write_text(env_file.read_text().replace("host_prefix: dev\n", f"host_prefix: {prefix}\n", 1))
    host_dir = project / ".orchestrate" / "dev" / "hosts" / f"{prefix}-app-2"
    host_dir.mkdir(parents=True)
    (host_dir / "host.json").write_text(json.dumps({
        "name": f"{prefix}-app-2", "address": "10.213.10.11", "groups": ["app"], "bridge": "orch-dev",
        "subnet": "10.213.10.0/24", "lowerdir": "/nonexistent",
    }))
    (host_dir / "supervisor.pid").write_text("999999999\n")
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "dev", "--json"])
    assert result.exit_code == 0, result.output
    states = {h["name"]: h["state"] for h in json.loads(result.stdout)["hosts"]}
    lb = {f"{prefix}-lb-1": "missing"} if _dev_has_lb(project) else {}
    assert states == {f"{prefix}-app-1": "missing", f"{prefix}-app-2": "stopped", f"{prefix}-app-3": "missing",
                      f"{prefix}-mon-1": "missing", **lb}


def test_hosts_of_an_aws_environment_without_an_inventory_is_bad_input(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "prod", "--json"])
    assert result.exit_code == 2
    assert "prod has no inventory yet" in result.output and "orchestrate provision prod" in result.output


def test_hosts_unknown_env_is_bad_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(_project(tmp_path)), "hosts", "nope"])
    assert result.exit_code == 2


def test_hosts_json_shows_the_default_bridge_and_subnet_chosen_for_the_env(tmp_path: Path) -> None:
    project = _project(tmp_path)
    env_file = project / "inventories" / "staging" / "environment.yml"
    env_file.write_text("".join(line for line in env_file.read_text().splitlines(keepends=True)
                                if not line.strip().startswith(("bridge:", "subnet:"))))
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "staging", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    kept = json.loads((project / ".orchestrate" / "staging" / "network.json").read_text())
    assert payload["bridge"] == "orch-stg" and payload["subnet"] == kept["subnet"]
    prefix = payload["subnet"].rsplit(".", 1)[0]
    assert [h["address"] for h in payload["hosts"]][:2] == [f"{prefix}.10", f"{prefix}.11"]
    again = CliRunner().invoke(cli, ["--project-dir", str(project), "hosts", "staging", "--json"])
    assert json.loads(again.stdout)["subnet"] == payload["subnet"]
