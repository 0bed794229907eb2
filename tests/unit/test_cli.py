"""The CLI boundary: help, version, project dir, exit codes, --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from orchestrator import __version__
from orchestrator.cli import cli

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, ["--project-dir", str(REPO), *args])


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_lists_verbs() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for verb in ("validate", "render", "envs"):
        assert f"  {verb} " in result.output


def test_validate_prod_ok() -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(REPO), "validate", "prod", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload == {**payload, "env": "prod", "valid": True, "target": "aws", "protected": True}


def test_unknown_env_exit_2_lists_known() -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(REPO), "validate", "qa"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: unknown environment 'qa'; known environments: dev, prod, staging"


def test_envs_json() -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(REPO), "envs", "--json"])
    assert result.exit_code == 0
    names = [e["name"] for e in json.loads(result.stdout)["envs"]]
    assert names == ["dev", "prod", "staging"]


def test_project_dir_from_environment(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["envs", "--json"], env={"ORCHESTRATE_PROJECT_DIR": str(REPO)})
    assert [e["name"] for e in json.loads(result.stdout)["envs"]] == ["dev", "prod", "staging"]
    empty = CliRunner().invoke(cli, ["validate", "dev"], env={"ORCHESTRATE_PROJECT_DIR": str(tmp_path)})
    assert empty.exit_code == 2 and "known environments: none" in empty.stderr


def test_render_writes_root_under_state_dir(project_copy: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "render", "dev", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    root = project_copy / ".orchestrate" / "dev" / "terraform"
    assert payload["terraform_dir"] == str(root)
    assert (root / "main.tf").exists()
    tfvars = json.loads((root / "terraform.tfvars.json").read_text())
    assert tfvars["app_count"] == 3 and tfvars["bridge"] == "orch-dev"


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "orchestrate"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "validate" in out.stdout
