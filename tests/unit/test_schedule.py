"""Cron lines for scheduled rollouts."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config import Project
from orchestrator.errors import UsageError
from orchestrator.schedule import build_entry, install, uninstall


def test_staging_line_runs_up_unattended(project_copy: Path) -> None:
    entry = build_entry(Project(project_copy).load("staging"))
    assert entry.expression == "30 4 * * 1-5"
    argv = shlex.split(entry.command.split(" >> ")[0])
    assert argv[argv.index("up") + 1] == "staging"
    assert "--json" in argv and argv[argv.index("--lock-wait") + 1] == "1800"
    assert argv[argv.index("--release") + 1] == str(project_copy.resolve() / "examples/hello-service")
    assert "--yes" not in argv
    assert entry.line.startswith("30 4 * * 1-5 root ")
    assert entry.command.endswith(f">> {entry.log_path} 2>&1")


def test_protected_env_needs_explicit_yes(project_copy: Path) -> None:
    loaded = Project(project_copy).load("prod")
    with pytest.raises(UsageError, match="prod is protected"):
        build_entry(loaded, expression="0 3 * * *")
    entry = build_entry(loaded, expression="0 3 * * *", yes=True)
    assert shlex.split(entry.command.split(" >> ")[0])[-1] == "--yes"


def test_bad_expression_is_refused(project_copy: Path) -> None:
    with pytest.raises(UsageError, match=r"--cron: 'every day' is not a cron expression"):
        build_entry(Project(project_copy).load("dev"), expression="every day")


def test_no_schedule_and_no_cron(project_copy: Path) -> None:
    with pytest.raises(UsageError, match="no --cron given"):
        build_entry(Project(project_copy).load("dev"))


def test_install_and_remove(project_copy: Path, tmp_path: Path) -> None:
    entry = build_entry(Project(project_copy).load("staging"))
    cron_dir = tmp_path / "cron.d"
    path = install(entry, cron_dir)
    text = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o644
    assert text.splitlines()[-1] == entry.line and "PATH=" in text
    assert install(entry, cron_dir) == path  # idempotent
    assert len(list(cron_dir.iterdir())) == 1
    assert uninstall(entry, cron_dir) and not path.exists()


def test_cli_prints_line_and_exit_2_for_protected(project_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["--project-dir", str(project_copy), "schedule", "staging", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["cron"] == "30 4 * * 1-5"
    refused = runner.invoke(cli, ["--project-dir", str(project_copy), "schedule", "prod", "--cron", "0 3 * * *",
                                  "--install", "--cron-dir", str(tmp_path / "c")])
    assert refused.exit_code == 2 and "protected" in refused.stderr
    assert not (tmp_path / "c").exists()
