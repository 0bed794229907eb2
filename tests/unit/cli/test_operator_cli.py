"""The operator verbs' command lines without hosts: `--` splitting, completion, -q/-v, input errors."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.cli._hosts import DashDashCommand, host_styles, remote_argv

REPO = Path(__file__).resolve().parents[3]


def test_words_after_dashdash_are_the_remote_command() -> None:
    seen: dict[str, object] = {}

    @click.command(cls=DashDashCommand)
    @click.argument("hosts", nargs=-1)
    @click.option("--json", "json_output", is_flag=True)
    def probe(hosts: tuple[str, ...], json_output: bool) -> None:
        seen.update(hosts=hosts, json=json_output, argv=remote_argv(click.get_current_context()))

    result = CliRunner().invoke(probe, ["dev-app-1", "--json", "--", "ls", "-l", "--json", "--", "x"])
    assert result.exit_code == 0, result.output
    assert seen == {"hosts": ("dev-app-1",), "json": True, "argv": ["ls", "-l", "--json", "--", "x"]}


def test_exec_needs_a_command_after_dashdash(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(REPO), "exec", "dev", "dev-app-1", "uname"])
    assert result.exit_code == 2
    assert "give the command after `--`" in result.stderr


def test_exec_before_provisioning_is_a_usage_error(project_copy: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "exec", "dev", "--", "uname", "-n"])
    assert result.exit_code == 2 and "has no inventory yet" in result.stderr


def test_logs_refuses_a_bad_since_and_unit(project_copy: Path) -> None:
    bad_since = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "logs", "dev", "--since", "yesterday"])
    assert bad_since.exit_code == 2 and "--since 'yesterday'" in bad_since.stderr
    bad_unit = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "logs", "dev", "--unit", "a;b"])
    assert bad_unit.exit_code == 2 and "--unit" in bad_unit.stderr


def test_completion_offers_environment_names() -> None:
    env = {"_ORCHESTRATE_COMPLETE": "bash_complete", "COMP_WORDS": f"orchestrate --project-dir {REPO} status d",
           "COMP_CWORD": "4"}
    result = CliRunner().invoke(cli, [], env=env, prog_name="orchestrate")
    assert "plain,dev" in result.output.split()
    env["COMP_WORDS"] = f"orchestrate --project-dir {REPO} logs "
    env["COMP_CWORD"] = "4"
    names = [line.split(",", 1)[1] for line in CliRunner().invoke(cli, [], env=env, prog_name="orchestrate")
             .output.split() if line.startswith("plain,")]
    assert names == ["dev", "prod", "staging"]


def test_bash_source_is_the_documented_completion_script() -> None:
    result = CliRunner().invoke(cli, [], env={"_ORCHESTRATE_COMPLETE": "bash_source"}, prog_name="orchestrate")
    assert "_orchestrate_completion" in result.output and "complete " in result.output


def test_quiet_and_verbose_exclude_each_other() -> None:
    result = CliRunner().invoke(cli, ["-q", "-v", "--project-dir", str(REPO), "envs"])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_quiet_keeps_errors(project_copy: Path) -> None:
    result = CliRunner().invoke(cli, ["-q", "--project-dir", str(project_copy), "status", "dev"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_host_colours_are_stable() -> None:
    styles = host_styles(["a", "b", "c"])
    assert styles == host_styles(["a", "b", "c"]) and len(set(styles.values())) == 3
