"""Verification of the rendered monitoring files with the real promtool and amtool (run through
orchestrator.tools.promtool), and the static heal-policy check (every remediation a rule names has
its playbook; throttles cover alert_for).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.types import parse_duration
from orchestrator.fleet.inventory import Host, fleet_hosts
from orchestrator.monitoring.dashboard import check_dashboard, promtool_rules
from orchestrator.monitoring.files import (
    ALERTMANAGER_FILE,
    BLACKBOX_FILE,
    DASHBOARD_FILE,
    HEAL_TOKEN_FILE,
    PROMETHEUS_FILE,
    MonitoringLayout,
    render_monitoring_texts,
    write_monitoring,
)
from orchestrator.monitoring.log_rules import log_route_cases
from orchestrator.monitoring.operator import find_rule_files, remediation_problems
from orchestrator.monitoring.rules import REMEDIATIONS, RULES_FILE, RULES_TEST_FILE, RouteCase, alert_rules, route_cases
from orchestrator.tools import promtool
from orchestrator.tools.clean_results import ResultKey, remember, remembered
from orchestrator.tools.process import which
from orchestrator.tools.promtool import ToolCheck


@dataclass(frozen=True)
class VerificationReport:
    """All checks of one environment's monitoring configuration."""

    env: str
    checks: list[ToolCheck]
    remembered: bool = False
    """The rendered files' checks are an earlier run's: nothing they depend on changed since it passed."""

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[ToolCheck]:
        return [check for check in self.checks if not check.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "ok": self.ok, "remembered": self.remembered,
                "checks": [c.as_dict() for c in self.checks]}


def amtool_route_argv(path: Path, case: RouteCase) -> list[str]:
    """argv of the amtool routing assertion for `case`."""
    return promtool.amtool_routes_test_argv(path, case.receiver, case.amtool_labels())


def test_routes(path: Path, cases: Sequence[RouteCase]) -> list[ToolCheck]:
    """`amtool config routes test --verify.receivers` for every case (exit 1 on a mismatch)."""
    return [promtool.test_route(path, case.receiver, case.amtool_labels(),
                                name=f"route {case.labels.get('alertname', '?')} -> {case.receiver}")
            for case in cases]


test_routes.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PolicyProblem:
    """A rule whose remediation cannot work as configured."""

    rule: str
    message: str


def check_heal_policy(loaded: LoadedEnvironment, playbooks_dir: Path | None = None) -> list[PolicyProblem]:
    """Static heal-policy check: remediations name playbooks that exist; throttles cover `for`.

    Every rule's `remediation` must be one of restart, rollback, none, and every one but `none`
    needs playbooks/remediate-<name>.yml. The healing throttle must not be shorter than the
    rule's `for`, nor than the time a remediable alert can keep firing after a fix (`clears_in`,
    its rate window), or a still-firing alert would be remediated again before it could resolve.
    """
    env = loaded.env
    playbooks_dir = playbooks_dir or loaded.project_dir / "playbooks"
    problems = []
    throttle = parse_duration(env.healing.throttle)
    for rule in alert_rules(env):
        if rule.remediation not in REMEDIATIONS:
            problems.append(PolicyProblem(rule.name, f"remediation {rule.remediation!r} is not one of "
                                                     f"{', '.join(REMEDIATIONS)}"))
            continue
        if rule.remediation != "none":
            playbook = playbooks_dir / f"remediate-{rule.remediation}.yml"
            if not playbook.is_file():
                problems.append(PolicyProblem(rule.name, f"remediation {rule.remediation!r} needs {playbook}, "
                                                         "which does not exist"))
        if env.healing.enabled and throttle < parse_duration(rule.for_):
            problems.append(PolicyProblem(rule.name, f"healing.throttle {env.healing.throttle} is shorter than "
                                                     f"the rule's for: {rule.for_}"))
        elif env.healing.enabled and rule.remediation != "none" and throttle < parse_duration(rule.clears_in):
            problems.append(PolicyProblem(rule.name, f"healing.throttle {env.healing.throttle} is shorter than the "
                                                     f"{rule.clears_in} the alert can keep firing after a fix"))
    return problems


def operator_rule_checks(loaded: LoadedEnvironment) -> list[ToolCheck]:
    """The operator's rules files (monitoring.rule_files): each found, named NAME.rules.yml, with its
    test beside it; `promtool check rules` and `promtool test rules`; remediations the heal policy
    knows. Every failure's detail starts with the file it is about."""
    found = find_rule_files(loaded)
    checks = [ToolCheck(f"rule_files {where}", False, "monitoring.rule_files", f"{where}: {problem}")
              for where, problem in found.problems]
    for rules in found.files:
        checks.append(_named(promtool.check_rules_named(rules.path, rules.display), rules.display))
        test = rules.display.removesuffix(rules.path.name) + rules.test.name
        if not rules.test.is_file():
            checks.append(ToolCheck(f"promtool test rules {test}", False, "monitoring.rule_files",
                                    f"{rules.display}: has no test {test} beside it (a promtool rule test, "
                                    "`promtool test rules`)"))
        else:
            checks.append(_named(promtool.test_rules_named(rules.test, test), test))
        problems = remediation_problems(rules)
        checks.append(ToolCheck(f"remediations {rules.display}", not problems, "monitoring.rule_files",
                                "\n".join(f"{rules.display}: {p}" for p in problems)))
    return checks


def _named(check: ToolCheck, display: str) -> ToolCheck:
    """`check` with a failure's detail starting with the file it is about."""
    return check if check.ok else replace(check, detail=f"{display}: {check.detail}")


def verify_monitoring(loaded: LoadedEnvironment, hosts: Sequence[Host] | None = None,
                      playbooks_dir: Path | None = None) -> VerificationReport:
    """Render `loaded`'s monitoring files into a scratch directory and run every check on them.

    The scratch render points rule_files and the token file at the scratch directory, so that
    `promtool check config` also checks the very rules rendered with it. When the rendered files,
    the routing cases and the tools are those of an earlier run whose checks all passed, that run's
    results are given (orchestrator.tools.clean_results): an `up` that only changes the release
    does not run promtool and amtool again.
    """
    hosts = list(hosts) if hosts is not None else fleet_hosts(loaded)
    cases = [*route_cases(loaded.env), *log_route_cases(loaded.env)]
    with tempfile.TemporaryDirectory(prefix="orchestrate-monitoring-") as scratch:
        root = Path(scratch)
        layout = replace(MonitoringLayout(), config_dir=str(root))
        texts = render_monitoring_texts(loaded, hosts, layout)
        key = _files_key(texts, scratch, cases)
        earlier = _earlier(remembered(FILES_CHECKS, key))
        if earlier is not None:
            rendered, dashboard = earlier
        else:
            write_monitoring(root, texts)
            (root / HEAL_TOKEN_FILE).write_text("verification-token\n")
            rendered = [
                promtool.check_rules(root / RULES_FILE),
                promtool.check_config(root / PROMETHEUS_FILE),
                promtool.test_rules(root / RULES_TEST_FILE),
                promtool.check_alertmanager_config(root / ALERTMANAGER_FILE),
                promtool.check_blackbox_config(root / BLACKBOX_FILE),
                *test_routes(root / ALERTMANAGER_FILE, cases),
            ]
            dashboard = verify_dashboard(json.loads((root / DASHBOARD_FILE).read_text()))
            if all(c.ok for c in [*rendered, *dashboard]):
                remember(FILES_CHECKS, key, json.dumps({"files": [c.as_dict() for c in rendered],
                                                        "dashboard": [c.as_dict() for c in dashboard]}))
    checks = [*rendered, *operator_rule_checks(loaded), *dashboard]
    problems = check_heal_policy(loaded, playbooks_dir)
    checks.append(ToolCheck(
        "heal policy", not problems, "check_heal_policy",
        "\n".join(f"{p.rule}: {p.message}" for p in problems),
    ))
    return VerificationReport(env=loaded.env.name, checks=checks, remembered=earlier is not None)


#: the name clean results of the rendered files' checks are remembered under
FILES_CHECKS = "monitoring-files"


def _earlier(stamp: str) -> tuple[list[ToolCheck], list[ToolCheck]] | None:
    """The checks of a remembered clean run (the files', the dashboard's), or None (none, or a stamp
    that is not one)."""
    if not stamp:
        return None
    try:
        data = json.loads(stamp)
        return ([ToolCheck(**c) for c in data["files"]], [ToolCheck(**c) for c in data["dashboard"]])
    except (ValueError, TypeError, KeyError):
        return None


def _files_key(texts: dict[str, str], scratch: str, cases: Sequence[RouteCase]) -> str:
    """What the checks of the rendered files depend on: the files (the scratch directory's name taken
    out), the routing cases, promtool and amtool."""
    key = ResultKey(FILES_CHECKS).tool(which(promtool.PROMTOOL)).tool(which(promtool.AMTOOL))
    for name in sorted(texts):
        key.text(name).text(texts[name].replace(scratch, "@scratch@"))
    for case in cases:
        key.text(case.receiver).text(json.dumps(case.amtool_labels()))
    return key.hexdigest()


def verify_dashboard(dashboard: dict[str, Any]) -> list[ToolCheck]:
    """The Grafana dashboard's structure (schemaVersion, unique panel ids, grid, targets) and every
    query it makes, as recording rules through `promtool check rules`."""
    problems = check_dashboard(dashboard)
    results = [ToolCheck("dashboard structure", not problems, "check_dashboard", "\n".join(problems))]
    with tempfile.TemporaryDirectory(prefix="orchestrate-dashboard-") as scratch:
        path = Path(scratch) / "dashboard-queries.rules.yml"
        path.write_text(yaml.safe_dump(promtool_rules(dashboard), sort_keys=False, width=10_000))
        found = promtool.check_rules(path)
    results.append(replace(found, name="dashboard queries (promtool check rules)"))
    return results
