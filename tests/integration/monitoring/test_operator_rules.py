"""The operator's own rules files (monitoring.rule_files) under the real promtool: a correct file with
a passing test passes; a syntax error, a missing test, a failing test or an unknown remediation
fails naming the file, in `orchestrate monitoring check` and `orchestrate verify`; the service
contract changes the generated rules (ledger's metrics, HAProxy's figures without metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.fleet.inventory import Host
from orchestrator.monitoring.checks import verify_monitoring
from orchestrator.monitoring.files import MonitoringLayout, render_monitoring_texts
from tests.support.cli import orchestrate

pytestmark = pytest.mark.integration

HOSTS = [Host("app-1", "10.213.10.10", ("app",)), Host("app-2", "10.213.10.11", ("app",)),
         Host("mon-1", "10.213.10.12", ("monitoring",)), Host("lb-1", "10.213.10.13", ("lb",))]

RULES = {"groups": [{"name": "team", "rules": [{
    "alert": "QueueBacklog", "expr": "queue_depth > 100", "for": "1m",
    "labels": {"severity": "warning", "remediation": "none"},
    "annotations": {"summary": "backlog on {{ $labels.host }}"}}]}]}
TEST = {"rule_files": ["team.rules.yml"], "evaluation_interval": "1m", "tests": [{
    "interval": "1m", "input_series": [{"series": 'queue_depth{host="app-1"}', "values": "500x5"}],
    "alert_rule_test": [{"eval_time": "3m", "alertname": "QueueBacklog", "exp_alerts": [{
        "exp_labels": {"host": "app-1", "severity": "warning", "remediation": "none"},
        "exp_annotations": {"summary": "backlog on app-1"}}]}]}]}

#: a rules file promtool cannot parse (an expression cut short)
BROKEN = "groups:\n  - name: team\n    rules:\n      - alert: X\n        expr: up ==\n"


def configure(project: Path, service: dict[str, Any] | None = None, **files: str) -> Path:
    """dev with monitoring.rule_files: [rules/*.rules.yml] and `files` ({name: text}) in inventories/dev/rules/."""
    env_file = project / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["monitoring"]["rule_files"] = ["rules/*.rules.yml"]
    if service:
        data["service"].update(service)
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    rules = project / "inventories" / "dev" / "rules"
    rules.mkdir(exist_ok=True)
    for name, text in files.items():
        (rules / name).write_text(text)
    return rules


def failures(project: Path) -> dict[str, str]:
    report = verify_monitoring(Project(project).load("dev"), HOSTS)
    return {c.name: c.detail for c in report.failures}


def test_a_correct_rules_file_with_its_test_passes_and_is_rendered(project_copy: Path, tmp_path: Path) -> None:
    configure(project_copy, **{"team.rules.yml": yaml.safe_dump(RULES), "team.rules.test.yml": yaml.safe_dump(TEST)})
    assert failures(project_copy) == {}
    report = verify_monitoring(Project(project_copy).load("dev"), HOSTS)
    names = {c.name for c in report.checks}
    assert {"promtool check rules inventories/dev/rules/team.rules.yml",
            "promtool test rules inventories/dev/rules/team.rules.test.yml"} <= names
    texts = render_monitoring_texts(Project(project_copy).load("dev"), HOSTS,
                                    MonitoringLayout(config_dir=str(tmp_path)))
    assert yaml.safe_load(texts["rules/operator-team.rules.yml"]) == RULES


@pytest.mark.parametrize(("files", "blamed", "why"), [
    ({"team.rules.yml": BROKEN},
     "inventories/dev/rules/team.rules.yml", "parse error"),
    ({"team.rules.yml": yaml.safe_dump(RULES)}, "inventories/dev/rules/team.rules.yml",
     "has no test inventories/dev/rules/team.rules.test.yml"),
    ({"team.rules.yml": yaml.safe_dump(RULES).replace("queue_depth > 100", "queue_depth > 1000"),
      "team.rules.test.yml": yaml.safe_dump(TEST)}, "inventories/dev/rules/team.rules.test.yml", "FAILED"),
    ({"team.rules.yml": yaml.safe_dump(RULES).replace("remediation: none", "remediation: reboot"),
      "team.rules.test.yml": yaml.safe_dump(TEST).replace("remediation: none", "remediation: reboot")},
     "inventories/dev/rules/team.rules.yml", "remediation 'reboot' is not one of restart, rollback, none"),
    ({"team.yml": yaml.safe_dump(RULES)}, "inventories/dev/rules/*.rules.yml", "matches no rules file"),
])
def test_a_bad_rules_file_fails_naming_the_file(project_copy: Path, files: dict[str, str], blamed: str,
                                                why: str) -> None:
    configure(project_copy, **files)
    found = failures(project_copy)
    assert any(detail.startswith(blamed) and why in detail for detail in found.values()), found


def test_verify_exits_1_naming_the_broken_rules_file(project_copy: Path) -> None:
    configure(project_copy, **{"broken.rules.yml": BROKEN,
                               "broken.rules.test.yml": yaml.safe_dump(TEST),
                               "untested.rules.yml": yaml.safe_dump(RULES)})
    code, data, err = orchestrate(project_copy, "verify", "dev", timeout=900)
    assert code == 1, err
    monitoring = next(c for c in data["checks"] if c["name"] == "monitoring")
    assert monitoring["status"] == "failed"
    assert {"inventories/dev/rules/broken.rules.yml", "inventories/dev/rules/untested.rules.yml"} <= set(
        monitoring["files"]), monitoring
    code, data, err = orchestrate(project_copy, "monitoring", "check", "dev")
    assert code == 1 and not data["ok"]
    assert "inventories/dev/rules/untested.rules.yml: has no test" in " ".join(c["detail"] for c in data["checks"])


@pytest.mark.parametrize(("service", "lb", "in_expr", "absent"), [
    ({"name": "ledger", "metrics": {"requests": "ledger_http_responses_total", "errors": 'class="5xx"'}}, 1,
     'ledger_http_responses_total{job="service",class="5xx"}', "haproxy_server"),
    ({"metrics": False}, 1, 'haproxy_server_http_responses_total{job="haproxy",proxy="hello",code="5xx"}', "hello_"),
    ({"metrics": False}, 0, None, "hello_"),
])
def test_the_contract_shapes_the_generated_rules_and_they_pass_promtool(
        project_copy: Path, service: dict[str, Any], lb: int, in_expr: str | None, absent: str) -> None:
    env_file = project_copy / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["service"].update(service)
    data["terraform"]["vars"]["lb_count"] = lb
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = Project(project_copy).load("dev")
    report = verify_monitoring(loaded, HOSTS)
    assert report.ok, {c.name: c.detail for c in report.failures}
    rules = yaml.safe_load(render_monitoring_texts(loaded, HOSTS)["rules/orchestrate.rules.yml"])
    exprs = {r["alert"]: r["expr"] for r in rules["groups"][0]["rules"]}
    assert "probe_http_status_code" in exprs["ServiceDown"] and "probe_success" in exprs["HealthFailing"]
    if in_expr is None:
        assert "HighErrorRate" not in exprs  # nothing counts the requests
    else:
        assert in_expr in exprs["HighErrorRate"]
    assert absent not in " ".join(exprs.values())
    test_output = next(c for c in report.checks if c.name == "promtool test rules").detail
    assert "SUCCESS" in test_output
