"""Unit tests of the terraform adapter's pure parts: argv, CLI config, event stream, plan JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import StateLockError, TerraformError
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
    assert "held by root@vm" in message and "lock ID 190f44f1-a186-5198-9656-ae1f1933042f" in message


def test_raise_maps_lock_errors_to_state_lock_error(tmp_path: Path) -> None:
    adapter = tf.Terraform(tmp_path, env_name="prod", state_dir=tmp_path, plugin_cache=tmp_path / "cache")
    lock = tf.Diagnostic(severity="error", summary="Error acquiring the state lock", detail=LOCK_DETAIL)
    with pytest.raises(StateLockError) as locked:
        adapter._raise("plan", [lock], "")
    assert locked.value.exit_status == 75
    with pytest.raises(TerraformError) as failed:
        adapter._raise("plan", [tf.Diagnostic(severity="error", summary="Unsupported argument")], "")
    assert not isinstance(failed.value, StateLockError)
    assert "terraform plan for prod failed: Unsupported argument" in str(failed.value)


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
