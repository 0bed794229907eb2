"""The rendered monitoring configuration of every shipped environment passes the real promtool and
amtool checks, and those checks do fail on a wrong expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.fleet.inventory import Host
from orchestrator.monitoring.checks import test_routes, verify_monitoring
from orchestrator.monitoring.files import ALERTMANAGER_FILE, MonitoringLayout, render_monitoring_texts, write_monitoring
from orchestrator.monitoring.log_rules import log_route_cases
from orchestrator.monitoring.rules import RULES_FILE, RULES_TEST_FILE, RouteCase, route_cases
from orchestrator.tools.promtool import check_rules, test_rules

pytestmark = pytest.mark.integration

ENVS = ("dev", "staging", "prod")
HOSTS = [Host("app-1", "10.213.10.10", ("app",)), Host("app-2", "10.213.10.11", ("app",)),
         Host("mon-1", "10.213.10.12", ("monitoring",)), Host("lb-1", "10.213.10.13", ("lb",))]


@pytest.mark.parametrize("name", ENVS)
def test_shipped_environment_passes_every_check(project_copy: Path, name: str) -> None:
    report = verify_monitoring(Project(project_copy).load(name), HOSTS)
    failures = {c.name: c.detail for c in report.failures}
    assert report.ok, failures
    names = [c.name for c in report.checks]
    assert {"promtool check config", "promtool check rules", "promtool test rules", "amtool check-config",
            "heal policy"} <= set(names)
    env = Project(project_copy).load(name).env
    assert sum(n.startswith("route ") for n in names) == len(route_cases(env)) + len(log_route_cases(env))
    test_output = next(c for c in report.checks if c.name == "promtool test rules").detail
    assert "SUCCESS" in test_output


def _render(project_copy: Path, tmp_path: Path, name: str = "dev") -> Path:
    loaded = Project(project_copy).load(name)
    layout = MonitoringLayout(config_dir=str(tmp_path), token_file=str(tmp_path / "heal.token"))
    write_monitoring(tmp_path, render_monitoring_texts(loaded, HOSTS, layout))
    return tmp_path


def test_rule_test_fails_when_an_annotation_differs(project_copy: Path, tmp_path: Path) -> None:
    root = _render(project_copy, tmp_path)
    path = root / RULES_TEST_FILE
    document = yaml.safe_load(path.read_text())
    first_firing = next(t for t in document["tests"] if t["alert_rule_test"][0]["exp_alerts"])
    first_firing["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"]["summary"] += " (changed)"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = test_rules(path)
    assert not result.ok
    assert "FAILED" in result.detail


def test_rule_test_fails_when_a_rule_stops_firing(project_copy: Path, tmp_path: Path) -> None:
    root = _render(project_copy, tmp_path)
    rules_path = root / RULES_FILE
    rules = yaml.safe_load(rules_path.read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "ServiceDown":
            rule["expr"] = 'up{job="service"} == 2'
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    assert check_rules(rules_path).ok
    result = test_rules(root / RULES_TEST_FILE)
    assert not result.ok and "ServiceDown" in result.detail


@pytest.mark.parametrize("for_", ["500ms", "0s"])
def test_rule_test_fails_when_one_failed_probe_would_fire(project_copy: Path, tmp_path: Path, for_: str) -> None:
    # dev's rules with a `for` shorter than its probe interval: the single failed probe fires
    root = _render(project_copy, tmp_path)
    rules_path = root / RULES_FILE
    rules = yaml.safe_load(rules_path.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = for_
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    assert check_rules(rules_path).ok
    result = test_rules(root / RULES_TEST_FILE)
    assert not result.ok
    assert "ServiceDown stays quiet after a single failed probe" in result.detail


def test_routing_test_fails_for_the_wrong_receiver(project_copy: Path, tmp_path: Path) -> None:
    root = _render(project_copy, tmp_path)
    wrong = RouteCase(labels={"alertname": "ServiceDown", "remediation": "restart", "env": "dev"},
                      receiver="default")
    right = RouteCase(labels={"alertname": "ServiceDown", "remediation": "restart", "env": "dev"},
                      receiver="heal")
    results = test_routes(root / ALERTMANAGER_FILE, [wrong, right])
    assert [r.ok for r in results] == [False, True]
