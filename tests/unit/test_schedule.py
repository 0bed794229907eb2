"""Cron lines for scheduled rollouts."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config.loader import Project
from orchestrator.errors import UsageError
from orchestrator.pipeline.schedule import build_entry, install, password_file_option, uninstall
from tests.support.project import copy_project


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


# --- the vault password file of environments with secrets -------------------------------------


def _argv_and_environment(command: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(command.split(" >> ")[0])
    assignments = {}
    while words and "=" in words[0] and not words[0].startswith("/"):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    return assignments, words


def test_env_with_secrets_needs_a_password_file(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    with pytest.raises(UsageError, match=r"dev has inventories/dev/secrets.yml: .* --vault-password-file FILE "
                                         r"\(or set ORCHESTRATE_VAULT_PASSWORD_FILE\)"):
        build_entry(loaded, expression="0 3 * * *")


def test_password_file_path_goes_into_the_line_never_the_password(project_copy: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project_copy)
    relative = Path("inventories/dev/.vault-password-dev")
    password = relative.read_text().splitlines()[0]
    entry = build_entry(Project(project_copy).load("dev"), expression="0 3 * * *", vault_password_file=relative)
    absolute = str(project_copy / relative)
    assert entry.environment == {"ORCHESTRATE_VAULT_PASSWORD_FILE": absolute}
    assignments, argv = _argv_and_environment(entry.command)
    assert assignments == {"ORCHESTRATE_VAULT_PASSWORD_FILE": absolute}
    assert argv[0].endswith("/orchestrate") and argv[argv.index("up") + 1] == "dev"
    assert entry.line.startswith(f"0 3 * * * root ORCHESTRATE_VAULT_PASSWORD_FILE={absolute} ")
    assert password not in entry.file_text()


def test_password_file_must_exist(project_copy: Path, tmp_path: Path) -> None:
    loaded = Project(project_copy).load("dev")
    with pytest.raises(UsageError, match=r"--vault-password-file /nowhere/pw: no such file"):
        build_entry(loaded, expression="0 3 * * *", vault_password_file=Path("/nowhere/pw"))
    with pytest.raises(UsageError, match=rf"ORCHESTRATE_VAULT_PASSWORD_FILE={tmp_path}: a directory"):
        build_entry(loaded, expression="0 3 * * *", vault_password_file=tmp_path,
                    vault_password_source="ORCHESTRATE_VAULT_PASSWORD_FILE")


def test_password_file_option_defaults_to_the_callers_environment() -> None:
    given = Path("/etc/orchestrate/pw")
    env = {"ORCHESTRATE_VAULT_PASSWORD_FILE": "/run/pw"}
    assert password_file_option(given, env) == (given, "--vault-password-file")
    assert password_file_option(None, env) == (Path("/run/pw"), "ORCHESTRATE_VAULT_PASSWORD_FILE")
    assert password_file_option(None, {}) == (None, "--vault-password-file")
    assert password_file_option(None, {"ORCHESTRATE_VAULT_PASSWORD_FILE": ""})[0] is None


def test_env_without_secrets_gets_the_path_only_when_given(project_copy: Path) -> None:
    staging = Project(project_copy).load("staging")
    assert build_entry(staging).environment == {}
    pw = project_copy / "inventories/dev/.vault-password-dev"
    assert build_entry(staging, vault_password_file=pw).environment == {"ORCHESTRATE_VAULT_PASSWORD_FILE": str(pw)}


def test_cli_takes_the_password_file_from_the_environment(project_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    pw = project_copy / "inventories/dev/.vault-password-dev"
    base = ["--project-dir", str(project_copy), "schedule", "dev", "--cron", "0 3 * * *"]
    ok = runner.invoke(cli, [*base, "--json"], env={"ORCHESTRATE_VAULT_PASSWORD_FILE": str(pw)})
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["environment"] == {"ORCHESTRATE_VAULT_PASSWORD_FILE": str(pw)}
    assert f"ORCHESTRATE_VAULT_PASSWORD_FILE={pw} " in data["line"]

    explicit = runner.invoke(cli, [*base, "--json", "--vault-password-file", str(pw)],
                             env={"ORCHESTRATE_VAULT_PASSWORD_FILE": "/nowhere/pw"})
    assert explicit.exit_code == 0, explicit.output  # the option wins over the environment

    cron_dir = tmp_path / "cron.d"
    refused = runner.invoke(cli, [*base, "--install", "--cron-dir", str(cron_dir)],
                            env={"ORCHESTRATE_VAULT_PASSWORD_FILE": None})
    assert refused.exit_code == 2, refused.output
    assert "secrets.yml" in refused.stderr and "--vault-password-file" in refused.stderr
    assert not cron_dir.exists()

    missing = runner.invoke(cli, [*base, "--install", "--cron-dir", str(cron_dir)],
                            env={"ORCHESTRATE_VAULT_PASSWORD_FILE": str(tmp_path / "gone")})
    assert missing.exit_code == 2
    assert f"ORCHESTRATE_VAULT_PASSWORD_FILE={tmp_path / 'gone'}: no such file" in missing.stderr
    assert not cron_dir.exists()


def test_cli_remove_needs_neither_cron_nor_password(project_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cron_dir = tmp_path / "cron.d"
    pw = project_copy / "inventories/dev/.vault-password-dev"
    base = ["--project-dir", str(project_copy), "schedule", "dev"]
    installed = runner.invoke(cli, [*base, "--cron", "0 3 * * *", "--install", "--cron-dir", str(cron_dir),
                                    "--vault-password-file", str(pw)])
    assert installed.exit_code == 0, installed.output
    assert len(list(cron_dir.iterdir())) == 1
    removed = runner.invoke(cli, [*base, "--remove", "--cron-dir", str(cron_dir), "--json"],
                            env={"ORCHESTRATE_VAULT_PASSWORD_FILE": None})
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout)["removed"] is True
    assert list(cron_dir.iterdir()) == []


def test_percent_signs_are_escaped_for_cron(tmp_path: Path) -> None:
    # cron would cut the command at the first unescaped % and feed the rest to it as stdin
    odd = tmp_path / "100%-project"
    odd.mkdir()
    loaded = Project(copy_project(odd)).load("staging")
    entry = build_entry(loaded)
    assert "%" in entry.command
    line_command = entry.line.split(" root ", 1)[1]
    assert "%" not in line_command.replace("\\%", "")
    # what cron hands to the shell (every \% back to %) is the command itself
    assert line_command.replace("\\%", "%") == entry.command
