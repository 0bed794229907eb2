"""The CLI boundary: help, version, project dir, exit codes, --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
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


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable verb (sub-verbs of groups such as `heal serve`), as argv prefixes."""
    ctx = click.Context(group)
    found: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found += _leaf_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def test_every_verb_takes_json() -> None:
    verbs = _leaf_commands(cli)
    assert len(verbs) >= 25 and ("validate",) in verbs and ("destroy",) in verbs
    missing = []
    for verb in verbs:
        result = CliRunner().invoke(cli, [*verb, "--help"])
        assert result.exit_code == 0, (verb, result.output)
        if "--json" not in result.output:
            missing.append(" ".join(verb))
    assert missing == []


#: a complete environment file with one bad value, and the one line it must give
MALFORMED = Path(__file__).parent / "config_corpus" / "04_bad_subnet.yml"
EXPECTED = MALFORMED.read_text().splitlines()[0].removeprefix("# expect: ")


def _malformed_project(tmp_path: Path) -> Path:
    env_dir = tmp_path / "inventories" / "corpus"
    env_dir.mkdir(parents=True)
    (env_dir / "environment.yml").write_text(MALFORMED.read_text())
    return tmp_path


def test_errors_have_no_traceback_without_debug(tmp_path: Path) -> None:
    project = _malformed_project(tmp_path)
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "validate", "corpus"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {EXPECTED}"]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    project = _malformed_project(tmp_path)
    result = CliRunner().invoke(cli, ["--debug", "--project-dir", str(project), "validate", "corpus"])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "orchestrator.errors.ConfigError" in result.stderr
    assert result.stderr.splitlines()[-1] == f"error: {EXPECTED}"


def test_every_verb_that_takes_the_lock_waits_the_same_bounded_time() -> None:
    """One behaviour for every verb: an operator's second command waits for the first, visibly, for
    up to DEFAULT_LOCK_WAIT seconds (cron passes its own); `--lock-wait 0` refuses at once."""
    from orchestrator.cli import _register_verbs, cli
    from orchestrator.runs.lock import DEFAULT_LOCK_WAIT

    _register_verbs()
    found: dict[str, object] = {}

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        for param in command.params:
            if "--lock-wait" in getattr(param, "opts", []):
                found[path] = param.default

    walk(cli, "")
    # resume passes its value on to the command it continues (unset: that command's default)
    expected = {"backup", "deploy", "destroy", "monitoring deploy", "provision", "restore", "rollback",
                "traffic", "up"}
    assert expected <= set(found), sorted(found)
    assert {path: found[path] for path in expected} == dict.fromkeys(expected, DEFAULT_LOCK_WAIT)
    assert found.get("resume") is None
    assert 0 < DEFAULT_LOCK_WAIT <= 3600


def test_validate_touches_nothing_on_the_machine(project_copy: Path, tmp_path: Path) -> None:
    """`validate` of a local env without bridge/subnet: no `ip` run, nothing written under .orchestrate/."""
    env_file = project_copy / "inventories" / "staging" / "environment.yml"
    env_file.write_text("".join(line for line in env_file.read_text().splitlines(keepends=True)
                                if not line.strip().startswith(("bridge:", "subnet:"))))
    # PATH has the interpreter's bin only (no `ip`): a loader that looked up routes would fail or fall back
    bin_dir = Path(sys.executable).parent
    assert not (bin_dir / "ip").exists()
    argv = [str(bin_dir / "orchestrate"), "--project-dir", str(project_copy), "validate", "staging", "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["valid"] is True
    written = sorted(str(p.relative_to(project_copy)) for p in (project_copy / ".orchestrate").rglob("*")) \
        if (project_copy / ".orchestrate").exists() else []
    assert written == []


def test_an_interrupt_exits_130_with_what_the_interrupted_work_did(tmp_path: Path) -> None:
    from orchestrator.cli._common import AppContext, verb
    from orchestrator.errors import Interrupted

    class Outcome:
        def as_dict(self) -> dict[str, object]:
            return {"restored_hosts": {"app-1": "0.1.0-abc"}}

    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.obj = AppContext(project_dir=tmp_path)

    @group.command("work")
    @verb
    def work(app: AppContext) -> None:
        raise Interrupted("deploy of 0.2.0-def stopped by SIGINT; the hosts that had switched are back",
                          result=Outcome())

    @group.command("plain")
    @verb
    def plain(app: AppContext) -> None:
        raise KeyboardInterrupt

    result = CliRunner().invoke(group, ["work", "--json"])
    assert result.exit_code == 130
    assert json.loads(result.stdout) == {
        "restored_hosts": {"app-1": "0.1.0-abc"}, "exit_code": 130,
        "error": "interrupted: deploy of 0.2.0-def stopped by SIGINT; the hosts that had switched are back"}
    assert result.stderr.startswith("interrupted: deploy of 0.2.0-def stopped by SIGINT")
    bare = CliRunner().invoke(group, ["plain"])
    assert (bare.exit_code, bare.stderr.strip(), bare.stdout) == (130, "interrupted", "")


def test_emoji_codes_in_data_are_printed_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli._common import AppContext

    app = AppContext(project_dir=tmp_path)
    app.info("host web-1:thumbs_up: answered :fire:")
    app.stdout_print("release 0.2.0:rocket:")
    captured = capsys.readouterr()
    assert "web-1:thumbs_up: answered :fire:" in captured.err
    assert "release 0.2.0:rocket:" in captured.out
