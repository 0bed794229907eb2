"""The log alerts: their rule group beside the others, promtool tests that pass on the rendered
files and fail on a wrong expectation, and their routing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.monitoring.files import render_monitoring_texts, write_monitoring
from orchestrator.monitoring.log_rules import EVENT_WINDOW, GROUP, log_alerts, log_route_cases, log_rules_group
from orchestrator.monitoring.rules import DEFAULT_RECEIVER, RULES_FILE, RULES_TEST_FILE

ENVS = ("dev", "staging", "prod")


def rendered(project_dir: Path, env: str, directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    texts = render_monitoring_texts(Project(project_dir).load(env), [])
    write_monitoring(directory, texts)
    return yaml.safe_load(texts[RULES_FILE]), yaml.safe_load(texts[RULES_TEST_FILE])


def promtool_test(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "test", "rules", Path(RULES_TEST_FILE).name], cwd=directory / "rules",
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("env", ENVS)
def test_the_log_alerts_are_their_own_group_and_pass_their_promtool_tests(
        project_copy: Path, tmp_path: Path, env: str) -> None:
    rules, tests = rendered(project_copy, env, tmp_path)
    groups = {g["name"]: g for g in rules["groups"]}
    assert GROUP in groups and "orchestrate" in groups
    assert [r["alert"] for r in groups[GROUP]["rules"]] == ["ServicePanicked", "UnitRestartLimitHit"]
    names = [t["name"] for t in tests["tests"]]
    for alert in log_alerts():
        assert sum(name.startswith(alert.name) for name in names) == 3  # fires, quiet, resolves
    result = promtool_test(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails_the_promtool_test(project_copy: Path, tmp_path: Path) -> None:
    _, tests = rendered(project_copy, "dev", tmp_path)
    for test in tests["tests"]:
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert["exp_labels"]["line"] = "some other line"
    (tmp_path / RULES_TEST_FILE).write_text(yaml.safe_dump(tests))
    result = promtool_test(tmp_path)
    assert result.returncode != 0 and "ServicePanicked" in result.stdout + result.stderr


def test_the_annotation_quotes_the_logged_line(project_copy: Path) -> None:
    env = Project(project_copy).load("dev").env
    group = log_rules_group(env)
    panic = next(r for r in group["rules"] if r["alert"] == "ServicePanicked")
    assert "{{ $labels.line }}" in panic["annotations"]["description"]
    assert panic["for"] == env.monitoring.alert_for and panic["labels"]["remediation"] == "none"
    assert f"[{EVENT_WINDOW}]" in panic["expr"] and "group_left (unit, line)" in panic["expr"]


def test_log_alerts_go_to_the_default_receiver(project_copy: Path) -> None:
    cases = log_route_cases(Project(project_copy).load("dev").env)
    assert {c.labels["alertname"] for c in cases} == {"ServicePanicked", "UnitRestartLimitHit"}
    assert {c.receiver for c in cases} == {DEFAULT_RECEIVER}


def test_without_central_logs_there_are_no_log_alerts(project_copy: Path, tmp_path: Path) -> None:
    env_file = project_copy / "inventories" / "dev" / "environment.yml"
    env_file.write_text(env_file.read_text().replace("    enabled: true\n    max_size: 512M",
                                                     "    enabled: false\n    max_size: 512M"))
    rules, tests = rendered(project_copy, "dev", tmp_path)
    assert GROUP not in {g["name"] for g in rules["groups"]}
    assert not any(t["name"].startswith("ServicePanicked") for t in tests["tests"])
    assert log_route_cases(Project(project_copy).load("dev").env) == []
