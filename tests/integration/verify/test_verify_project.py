"""`orchestrate verify` on the shipped environments and on broken copies of the project.

Every check runs the real tool (terraform, ansible-playbook, ansible-lint, promtool, amtool).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config.loader import Project
from orchestrator.monitoring import rules as monitoring
from orchestrator.verify.runner import check_names
from tests.support.cli import run_orchestrate
from tests.support.project import PLANS, REPO

pytestmark = pytest.mark.integration


def _checks(stdout: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(stdout)["checks"]}


#: every environment the project ships: a new inventories/ENV/environment.yml is verified too
SHIPPED_ENVIRONMENTS = Project(REPO).environment_names()


def test_the_shipped_environments_are_found() -> None:
    assert {"dev", "staging", "prod"} <= set(SHIPPED_ENVIRONMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("env", SHIPPED_ENVIRONMENTS)
def test_shipped_environments_pass(shared_project: Path, env: str) -> None:
    result = run_orchestrate(shared_project, "verify", env, "--json")
    checks = _checks(result.stdout)
    failures = {n: c["detail"] for n, c in checks.items() if c["status"] == "failed"}
    assert result.returncode == 0, failures
    assert list(checks) == check_names()
    for name in ("environment", "terraform-fmt", "terraform-validate", "ansible-syntax", "ansible-lint",
                 "monitoring", "heal-policy", "deploy-model"):
        assert checks[name]["status"] == "ok", (name, checks[name]["detail"])
    assert "paths" in checks["deploy-model"]["detail"]
    if Project(shared_project).load(env).env.target != "local":
        # aws needs credentials to plan; without a saved plan the graph is skipped, saying why
        assert checks["resource-graph"]["status"] == "skipped"
        assert f"orchestrate plan {env}" in checks["resource-graph"]["detail"]
    else:
        assert checks["resource-graph"]["status"] == "ok"
        assert "module.fleet.terraform_data.host" in checks["resource-graph"]["detail"]


def test_human_report_is_a_table(shared_project: Path) -> None:
    result = run_orchestrate(shared_project, "verify", "dev", "--check", "environment", "--check", "deploy-model")
    assert result.returncode == 0, result.stderr
    # not a terminal: one tab-separated row per check under a header row, the title on stderr
    rows = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert rows[0][:2] == ["check", "status"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("environment", "ok"), ("deploy-model", "ok")]
    assert "verify dev" in result.stderr
    assert "dev: ok — 2 ok, 0 failed, 0 skipped" in result.stdout


def test_unknown_check_or_environment_is_bad_input(shared_project: Path) -> None:
    assert run_orchestrate(shared_project, "verify", "nope").returncode == 2
    result = run_orchestrate(shared_project, "verify", "dev", "--check", "spelling")
    assert result.returncode == 2
    assert "unknown check(s) spelling" in result.stderr


@pytest.mark.slow
def test_a_playbook_with_a_lint_error_fails_naming_the_file(project_copy: Path) -> None:
    (project_copy / "playbooks" / "uptime.yml").write_text(
        "---\n"
        "- name: Show uptime\n"
        "  hosts: app\n"
        "  tasks:\n"
        "    - name: Read uptime\n"
        "      ansible.builtin.command: uptime\n"  # no changed_when: no-changed-when
    )
    result = run_orchestrate(project_copy, "verify", "dev", "--check", "ansible-syntax", "--check", "ansible-lint",
                             "--json")
    assert result.returncode == 1
    checks = _checks(result.stdout)
    assert checks["ansible-syntax"]["status"] == "ok"
    lint = checks["ansible-lint"]
    assert lint["status"] == "failed"
    assert lint["files"] == ["playbooks/uptime.yml"]
    assert "playbooks/uptime.yml:5" in lint["detail"] and "no-changed-when" in lint["detail"]


def test_a_playbook_with_a_syntax_error_fails_naming_the_file(project_copy: Path) -> None:
    (project_copy / "playbooks" / "broken.yml").write_text(
        "---\n- name: Broken\n  hosts: app\n  tasks:\n    - name: Nothing\n      no_such_module_at_all: {}\n")
    result = run_orchestrate(project_copy, "verify", "dev", "--check", "ansible-syntax", "--json")
    assert result.returncode == 1
    syntax = _checks(result.stdout)["ansible-syntax"]
    assert syntax["status"] == "failed" and syntax["files"] == ["playbooks/broken.yml"]
    assert "no_such_module_at_all" in syntax["detail"]


def test_a_broken_alert_rule_fails_naming_the_file(shared_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = monitoring.alert_rules

    def broken_rules(env: Any) -> list[monitoring.AlertRule]:
        rules = original(env)
        return [replace(rules[0], expr=rules[0].expr + " +"), *rules[1:]]  # a PromQL syntax error

    monkeypatch.setattr(monitoring, "alert_rules", broken_rules)
    result = CliRunner().invoke(cli, ["--project-dir", str(shared_project), "verify", "dev", "--check",
                                      "monitoring", "--json"])
    assert result.exit_code == 1, result.output
    check = _checks(result.stdout)["monitoring"]
    assert check["status"] == "failed"
    assert "promtool check rules" in check["detail"]
    assert any(f.endswith("rules/orchestrate.rules.yml") for f in check["files"])


def test_a_heal_policy_without_its_playbook_fails(project_copy: Path) -> None:
    (project_copy / "playbooks" / "remediate-rollback.yml").unlink()
    result = run_orchestrate(project_copy, "verify", "dev", "--check", "heal-policy", "--json")
    assert result.returncode == 1
    check = _checks(result.stdout)["heal-policy"]
    assert "alert HighErrorRate: remediation 'rollback' needs" in check["detail"]


def test_unformatted_and_invalid_terraform_fail_naming_the_file(project_copy: Path) -> None:
    main = project_copy / "terraform" / "modules" / "local_fleet" / "main.tf"
    main.write_text(main.read_text() + '\noutput "oops" {\nvalue = var.not_declared\n}\n')
    result = run_orchestrate(project_copy, "verify", "dev", "--check", "terraform-fmt", "--check",
                             "terraform-validate", "--json")
    assert result.returncode == 1
    checks = _checks(result.stdout)
    assert checks["terraform-fmt"]["files"] == ["terraform/modules/local_fleet/main.tf"]
    validate = checks["terraform-validate"]
    assert validate["status"] == "failed"
    assert "terraform/modules/local_fleet/main.tf:" in validate["detail"]
    assert "not_declared" in validate["detail"]


def test_a_broken_environment_file_fails_and_skips_what_needs_it(project_copy: Path) -> None:
    env_file = project_copy / "inventories" / "dev" / "environment.yml"
    env_file.write_text(env_file.read_text().replace("strategy: rolling", "strategy: bluegreen"))
    result = run_orchestrate(project_copy, "verify", "dev", "--check", "environment", "--check", "deploy-model",
                             "--json")
    assert result.returncode == 1
    checks = _checks(result.stdout)
    assert checks["environment"]["status"] == "failed"
    assert "inventories/dev/environment.yml:" in checks["environment"]["detail"]
    assert "'bluegreen' is not one of rolling, canary" in checks["environment"]["detail"]
    assert checks["deploy-model"]["status"] == "skipped"


def _save_plan(project: Path, plan: dict[str, Any]) -> None:
    directory = project / ".orchestrate" / "dev" / "terraform"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plan.json").write_text(json.dumps(plan))


def test_a_saved_plan_with_a_cycle_or_a_dangling_reference_fails(project_copy: Path) -> None:
    plan = json.loads((PLANS / "plan.json").read_text())
    root = plan["configuration"]["root_module"]
    network = next(r for r in root["resources"] if r["address"] == "terraform_data.network")
    network["depends_on"] = ["terraform_data.backup"]
    _save_plan(project_copy, plan)
    graph = run_orchestrate(project_copy, "graph", "dev", "--format", "dot")
    assert graph.returncode == 1
    assert "graph problem: terraform_data." in graph.stderr and "dependency cycle: " in graph.stderr
    verify = run_orchestrate(project_copy, "verify", "dev", "--check", "resource-graph", "--json")
    assert verify.returncode == 1
    check = _checks(verify.stdout)["resource-graph"]
    assert check["status"] == "failed" and "dependency cycle: " in check["detail"]

    network["depends_on"] = ["terraform_data.gone"]
    _save_plan(project_copy, plan)
    verify = run_orchestrate(project_copy, "verify", "dev", "--check", "resource-graph", "--json")
    assert verify.returncode == 1
    assert ("terraform_data.network: reference 'terraform_data.gone' points at no resource "
            "'terraform_data.gone' in root module") in _checks(verify.stdout)["resource-graph"]["detail"]
