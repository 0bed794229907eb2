"""Unit tests of the terraform adapter: argv, env, CLI config, event stream, plan JSON, timeouts.

The pure parts are called directly; the process handling (environment of every call, timeouts)
runs a fake `terraform` script put first on PATH, since it tests the adapter, not terraform.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.errors import ConfigError, StateLockError, TerraformError
from orchestrator.fleet.provision import terraform_for
from orchestrator.tools import terraform as tf

LOCK_DETAIL = (
    "Error message: operation error S3: PutObject, https response error StatusCode: 412, api error "
    "PreconditionFailed: At least one of the pre-conditions you specified did not hold\n"
    "Lock Info:\n"
    "  ID:        190f44f1-a186-5198-9656-ae1f1933042f\n"
    "  Path:      orchestrate-prod-state/prod/terraform.tfstate\n"
    "  Operation: OperationTypeApply\n"
    "  Who:       root@vm\n"
    "  Version:   1.11.4\n"
    "  Created:   2026-11-23 17:46:58.931489338 +0000 UTC\n"
    "  Info:      \n\n\nTerraform acquires a state lock to protect the state from being written\n"
)


def event(kind: str, **body: object) -> str:
    return json.dumps({"@level": "info", "@message": f"a {kind}", "type": kind, **body})


def test_plan_argv_uses_plan_file_detailed_exitcode_and_json() -> None:
    argv = tf.plan_argv(Path("/s/plan.tfplan"))
    assert argv[:2] == ["terraform", "plan"]
    assert "-out=/s/plan.tfplan" in argv
    assert "-detailed-exitcode" in argv and "-json" in argv and "-input=false" in argv
    assert "-refresh-only" not in argv
    assert "-refresh-only" in tf.plan_argv(Path("p"), refresh_only=True)
    assert "-destroy" in tf.plan_argv(Path("p"), destroy=True)


def test_apply_argv_applies_the_plan_file_last_and_never_auto_approve() -> None:
    argv = tf.apply_argv(Path("/s/plan.tfplan"))
    assert argv[-1] == "/s/plan.tfplan"
    assert "-json" in argv and "-auto-approve" not in argv


def test_other_argv_builders() -> None:
    assert tf.init_argv()[:3] == ["terraform", "init", "-input=false"]
    assert "-reconfigure" in tf.init_argv() and "-reconfigure" not in tf.init_argv(reconfigure=False)
    assert tf.destroy_argv()[:3] == ["terraform", "destroy", "-auto-approve"]
    assert tf.output_argv() == ["terraform", "output", "-no-color", "-json"]
    assert tf.show_argv(Path("x.tfplan")) == ["terraform", "show", "-no-color", "-json", "x.tfplan"]


def test_cli_config_uses_the_mirror_only_for_registry_providers() -> None:
    text = tf.cli_config_text(Path("/opt/tf-plugins"))
    assert 'path    = "/opt/tf-plugins"' in text
    assert "filesystem_mirror" in text and 'exclude = ["registry.terraform.io/*/*"]' in text
    assert "provider_installation" not in tf.cli_config_text(None)


def test_environment_is_non_interactive_and_names_the_cli_config() -> None:
    env = tf.terraform_env(Path("/s/terraformrc"), Path("/cache"))
    assert env["TF_CLI_CONFIG_FILE"] == "/s/terraformrc"
    assert env["TF_PLUGIN_CACHE_DIR"] == "/cache"
    assert env["TF_IN_AUTOMATION"] == "1" and env["TF_INPUT"] == "0"


# --- real subprocesses of a fake `terraform` on PATH (the adapter's process handling) ---------

FAKE_TERRAFORM = """#!{python}
import json, os, sys, time
record = os.environ["FAKE_TF_RECORD"]
config = os.environ.get("TF_CLI_CONFIG_FILE", "")
with open(record, "a") as out:
    out.write(json.dumps({{
        "argv": sys.argv[1:],
        "pid": os.getpid(),
        "env": {{k: os.environ.get(k) for k in ("TF_CLI_CONFIG_FILE", "TF_IN_AUTOMATION", "TF_INPUT",
                                                "TF_PLUGIN_CACHE_DIR")}},
        "cli_config": open(config).read() if config and os.path.exists(config) else None,
    }}) + "\\n")
def stopped(signum, frame):
    # terraform's graceful stop: note which signal asked for it, then exit as terraform would
    with open(record + ".signal", "w") as out:
        out.write(str(signum))
    sys.exit(1)
import signal
signal.signal(signal.SIGINT, stopped)
signal.signal(signal.SIGTERM, stopped)
time.sleep(float(os.environ.get("FAKE_TF_SLEEP", "0")))
print("{{}}")
"""


@pytest.fixture
def fake_terraform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `terraform` first on PATH that records its argv and environment; returns the record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "terraform"
    script.write_text(FAKE_TERRAFORM.format(python=sys.executable))
    script.chmod(0o755)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TF_RECORD", str(record))
    monkeypatch.delenv("TF_CLI_CONFIG_FILE", raising=False)
    monkeypatch.delenv("TF_IN_AUTOMATION", raising=False)
    return record


def calls(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_every_call_gets_the_cli_config_and_automation_env_also_fmt(fake_terraform: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    adapter = tf.Terraform(root, env_name="prod", state_dir=tmp_path / "state", plugin_cache=tmp_path / "cache",
                           mirror=mirror)
    assert adapter.output() == {}
    assert tf.fmt_check(root, mirror=mirror) == ["{}"]  # the fake prints "{}" as the one unformatted file
    output_call, fmt_call = calls(fake_terraform)
    assert output_call["argv"] == tf.output_argv()[1:]
    assert fmt_call["argv"] == tf.fmt_check_argv(root)[1:]
    for call in (output_call, fmt_call):
        assert call["env"]["TF_IN_AUTOMATION"] == "1" and call["env"]["TF_INPUT"] == "0"
        assert call["env"]["TF_CLI_CONFIG_FILE"], call
        assert call["cli_config"] == tf.cli_config_text(mirror)  # the file existed during the call
    assert output_call["env"]["TF_CLI_CONFIG_FILE"] == str(tmp_path / "state" / "terraformrc")
    # fmt has no environment state dir: its CLI config lived in a scratch dir, removed afterwards
    assert not Path(fmt_call["env"]["TF_CLI_CONFIG_FILE"]).exists()


def test_a_command_past_its_timeout_is_stopped_and_named(fake_terraform: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TF_SLEEP", "60")
    adapter = tf.Terraform(tmp_path, env_name="prod", state_dir=tmp_path / "state", plugin_cache=tmp_path / "cache",
                           timeouts=tf.Timeouts(plan=0.5), timeouts_source="inventories/prod/environment.yml")
    started = time.monotonic()
    with pytest.raises(tf.TerraformTimeout) as stopped:
        adapter.plan(tmp_path / "plan.tfplan")
    assert time.monotonic() - started < 10
    assert isinstance(stopped.value, TerraformError) and stopped.value.exit_status == 1
    assert str(stopped.value) == ("terraform plan for prod timed out after 0.5 s and was stopped "
                                  "(the limit is terraform.timeouts.plan in inventories/prod/environment.yml)")
    assert stopped.value.hint is not None and "force-unlock" in stopped.value.hint
    (call,) = calls(fake_terraform)
    with pytest.raises(ProcessLookupError):  # the fake terraform was stopped, not left running
        os.kill(call["pid"], 0)
    # asked to stop as terraform wants it (SIGINT: finish what is in flight, write the state)
    assert Path(f"{fake_terraform}.signal").read_text() == str(int(signal.SIGINT))


def test_environment_file_timeouts_reach_the_adapter(project_copy: Path) -> None:
    env_file = project_copy / "inventories" / "prod" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["terraform"]["timeouts"] = {"apply": "2h", "plan": 90}
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    adapter = terraform_for(Project(project_copy).load("prod"))
    assert adapter.timeouts.apply == 7200 and adapter.timeouts.plan == 90
    assert adapter.timeouts.init == tf.Timeouts().init  # unset: the default
    assert adapter.timeouts_source == "inventories/prod/environment.yml"
    assert terraform_for(Project(project_copy).load("dev")).timeouts == tf.Timeouts()


@pytest.mark.parametrize(("value", "expected"), [
    ("forever", "'forever' is not a duration"),
    ("0s", "'0s' must be longer than 0s"),
])
def test_a_bad_timeout_names_the_file_line_and_field(project_copy: Path, value: str, expected: str) -> None:
    env_file = project_copy / "inventories" / "prod" / "environment.yml"
    text = env_file.read_text().replace("terraform:\n", f"terraform:\n  timeouts:\n    apply: {value}\n", 1)
    env_file.write_text(text)
    line = text.splitlines().index(f"    apply: {value}") + 1
    with pytest.raises(ConfigError) as bad:
        Project(project_copy).load("prod")
    assert bad.value.exit_status == 2
    assert str(bad.value).startswith(f"inventories/prod/environment.yml:{line}: terraform.timeouts.apply: ")
    assert expected in str(bad.value)
    assert "\n" not in str(bad.value)


def test_event_log_collects_diagnostics_planned_changes_and_summary() -> None:
    seen: list[tf.ProgressEvent] = []
    log = tf.EventLog(on_progress=seen.append)
    lines = [
        "not json at all",
        event("planned_change", change={"resource": {"addr": "module.fleet.aws_vpc.this", "resource_type": "aws_vpc"},
                                        "action": "create"}),
        event("apply_start", hook={"resource": {"addr": "module.fleet.aws_vpc.this"}, "action": "create"}),
        event("apply_progress", hook={"resource": {"addr": "module.fleet.aws_vpc.this"}, "action": "create",
                                      "elapsed_seconds": 10}),
        event("apply_complete", hook={"resource": {"addr": "module.fleet.aws_vpc.this"}, "action": "create",
                                      "elapsed_seconds": 12}),
        event("change_summary", changes={"add": 1, "change": 0, "remove": 0, "operation": "apply"}),
        event("diagnostic", diagnostic={"severity": "warning", "summary": "Deprecated"}),
        event("diagnostic", diagnostic={"severity": "error", "summary": "Invalid value for variable",
                                        "detail": "The app_count must be a whole number from 1 to 200.",
                                        "range": {"filename": "main.tf", "start": {"line": 7, "column": 3}}}),
    ]
    for line in lines:
        log.feed(line)
    assert log.planned == [("module.fleet.aws_vpc.this", "aws_vpc", "create")]
    assert log.change_summary["add"] == 1
    assert [d.summary for d in log.errors] == ["Invalid value for variable"]
    assert len(log.diagnostics) == 2
    assert [(e.phase, e.elapsed) for e in seen] == [("planned", None), ("start", None), ("progress", 10),
                                                    ("complete", 12), ("summary", None)]
    assert log.other_lines == ["not json at all"]


def test_failure_message_carries_terraform_diagnostics_verbatim_with_context() -> None:
    diag = tf.Diagnostic.from_json({"severity": "error", "summary": "Invalid value for variable",
                                    "detail": "The app_count must be a whole number from 1 to 200.",
                                    "range": {"filename": "main.tf", "start": {"line": 7}}})
    message = tf.failure_message("plan", "prod", [diag], fallback="ignored")
    assert message.startswith("terraform plan for prod failed: Invalid value for variable (main.tf:7)")
    assert "The app_count must be a whole number from 1 to 200." in message
    assert tf.failure_message("init", "dev", [], fallback="boom\n") == "terraform init for dev failed: boom"


def test_lock_error_is_detected_and_names_who_holds_it() -> None:
    diag = tf.Diagnostic(severity="error", summary="Error acquiring the state lock", detail=LOCK_DETAIL)
    other = tf.Diagnostic(severity="error", summary="Invalid reference")
    assert tf.is_lock_error([diag])
    assert not tf.is_lock_error([other])
    assert tf.is_lock_error([], stderr="Error: Error acquiring the state lock\n")
    info = tf.lock_info(LOCK_DETAIL)
    assert info["Who"] == "root@vm" and info["Operation"] == "OperationTypeApply"
    message = tf.lock_error_message("apply", "prod", [diag])
    assert "\n" not in message
    assert message.startswith("terraform apply for prod refused: the Terraform state lock is held by another run (")
    assert "(by root@vm, for apply, since 2026-11-23" in message
    assert "lock ID 190f44f1-a186-5198-9656-ae1f1933042f" in message


def test_raise_maps_lock_errors_to_state_lock_error(tmp_path: Path) -> None:
    adapter = tf.Terraform(tmp_path, env_name="prod", state_dir=tmp_path, plugin_cache=tmp_path / "cache")
    lock = tf.Diagnostic(severity="error", summary="Error acquiring the state lock", detail=LOCK_DETAIL)
    with pytest.raises(StateLockError) as locked:
        adapter._raise("plan", [lock], "")
    assert locked.value.exit_status == 75
    assert locked.value.hint is not None
    assert "`terraform force-unlock 190f44f1-a186-5198-9656-ae1f1933042f` in " in locked.value.hint
    with pytest.raises(TerraformError) as failed:
        adapter._raise("plan", [tf.Diagnostic(severity="error", summary="Unsupported argument")], "")
    assert not isinstance(failed.value, StateLockError)
    assert "terraform plan for prod failed: Unsupported argument" in str(failed.value)


def test_a_stale_saved_plan_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    # terraform's words when another run applied between our plan and our apply
    adapter = tf.Terraform(tmp_path, env_name="prod", state_dir=tmp_path, plugin_cache=tmp_path / "cache")
    stale = tf.Diagnostic(severity="error", summary="Saved plan is stale",
                          detail="The given plan file can no longer be applied because the state was changed by "
                                 "another operation after the plan was created.")
    assert tf.is_stale_plan([stale]) and not tf.is_stale_plan([tf.Diagnostic(severity="error", summary="x")])
    with pytest.raises(tf.StalePlanError) as refused:
        adapter._raise("apply", [stale], "")
    assert refused.value.exit_status == 75
    assert str(refused.value) == ("terraform apply for prod refused: the saved plan is stale, another run changed "
                                  "the Terraform state after this plan was made; nothing was applied")
    assert refused.value.hint is not None and "orchestrate provision prod" in refused.value.hint


@pytest.mark.parametrize(
    ("action", "columns"),
    [
        ("create", ["add"]),
        ("update", ["change"]),
        ("delete", ["destroy"]),
        ("replace", ["add", "destroy"]),
        (["delete", "create"], ["add", "destroy"]),
        (["no-op"], []),
        ("read", []),
    ],
)
def test_action_columns(action: str | list[str], columns: list[str]) -> None:
    assert tf.action_columns(action) == columns


def test_summaries_from_events_and_from_plan_json_agree() -> None:
    from_events = tf.summarize_changes([
        ("aws_instance", "create"), ("aws_instance", "create"), ("aws_security_group", "update"),
        ("aws_key_pair", "replace"),
    ])
    plan_json = {"resource_changes": [
        {"type": "aws_instance", "change": {"actions": ["create"]}},
        {"type": "aws_instance", "change": {"actions": ["create"]}},
        {"type": "aws_security_group", "change": {"actions": ["update"]}},
        {"type": "aws_key_pair", "change": {"actions": ["delete", "create"]}},
        {"type": "aws_vpc", "change": {"actions": ["no-op"]}},
    ]}
    from_json = tf.summarize_plan_json(plan_json)
    assert from_events.by_type == from_json.by_type
    assert from_json.by_type["aws_instance"] == {"add": 2, "change": 0, "destroy": 0}
    assert from_json.totals == {"add": 3, "change": 1, "destroy": 1}
    assert from_json.has_changes
    assert not tf.summarize_changes([]).has_changes


def test_drift_lists_changed_attributes() -> None:
    plan_json = {"resource_drift": [{
        "address": "module.fleet.aws_security_group.app",
        "change": {"actions": ["update"],
                   "before": {"id": "sg-1", "ingress": [{"from_port": 22}], "tags": {"a": "b"}},
                   "after": {"id": "sg-1", "ingress": [{"from_port": 22}, {"from_port": 3306}], "tags": {"a": "b"}}},
    }]}
    drift = tf.drift_from_plan_json(plan_json)
    assert drift == [tf.Drift(address="module.fleet.aws_security_group.app", action="update", attributes=["ingress"])]
    assert tf.drift_from_plan_json({}) == []


def test_init_stamp_changes_with_the_rendered_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    module = tmp_path / "module"
    root.mkdir()
    module.mkdir()
    (root / "main.tf").write_text("a")
    (module / "main.tf").write_text("m")
    adapter = tf.Terraform(root, env_name="dev", state_dir=tmp_path, plugin_cache=tmp_path / "c",
                           module_dirs=[module])
    first = adapter.init_stamp()
    assert adapter.init_stamp() == first
    (module / "main.tf").write_text("m2")
    second = adapter.init_stamp()
    assert second != first
    (root / ".terraform.lock.hcl").write_text("lock")
    assert adapter.init_stamp() != second


def test_graph_and_readonly_lock_argv() -> None:
    assert tf.graph_argv() == ["terraform", "graph"]
    assert tf.graph_argv(plan_destroy=True) == ["terraform", "graph", "-type=plan-destroy"]
    assert "-lockfile=readonly" not in tf.init_argv()
    assert tf.init_argv(lockfile_readonly=True)[-1] == "-lockfile=readonly"


def test_init_keeps_to_the_lock_file_and_graph_goes_through_the_adapter(fake_terraform: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / tf.LOCK_FILE).write_text("# lock\n")
    locked = tf.Terraform(root, env_name="prod", state_dir=tmp_path / "state", plugin_cache=tmp_path / "cache",
                          lock_file=tmp_path / "inventories" / "prod" / tf.LOCK_FILE)
    assert locked.init(force=True)
    free = tf.Terraform(root, env_name="dev", state_dir=tmp_path / "state", plugin_cache=tmp_path / "cache")
    assert free.init(force=True)
    assert locked.graph(plan_destroy=True) == "{}\n"  # what the fake printed
    init_locked, init_free, graph = calls(fake_terraform)
    assert init_locked["argv"] == tf.init_argv(lockfile_readonly=True)[1:]
    assert init_free["argv"] == tf.init_argv()[1:]
    assert graph["argv"] == ["graph", "-type=plan-destroy"]
    assert graph["env"]["TF_CLI_CONFIG_FILE"] == str(tmp_path / "state" / "terraformrc")


def test_a_readonly_lock_failure_says_how_to_update_the_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / "inventories" / "prod" / tf.LOCK_FILE
    adapter = tf.Terraform(tmp_path, env_name="prod", state_dir=tmp_path / "state", plugin_cache=tmp_path / "c",
                           lock_file=lock)
    diagnostic = tf.Diagnostic("error", "Provider dependency changes detected",
                               "Changes to the required provider dependencies were detected, but the lock file is "
                               "read-only.")

    def fail(*args: object, **kwargs: object) -> None:
        adapter._raise("init", [diagnostic], "")

    adapter._run_json = fail  # type: ignore[assignment,method-assign]
    with pytest.raises(TerraformError) as failed:
        adapter.init(force=True)
    assert "Provider dependency changes detected" in failed.value.message
    assert failed.value.hint is not None and str(lock) in failed.value.hint and "providers lock" in failed.value.hint
