"""Verification of the rendered monitoring files with the real promtool and amtool, and the static
heal-policy check (every remediation a rule names has its playbook; throttles cover alert_for).
"""

from __future__ import annotations

import json
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import parse_duration
from orchestrator.errors import CommandError
from orchestrator.fleet.inventory import Host, fleet_hosts
from orchestrator.monitoring.dashboard import check_dashboard, promtool_rules
from orchestrator.monitoring.files import (
    ALERTMANAGER_FILE,
    DASHBOARD_FILE,
    HEAL_TOKEN_FILE,
    PROMETHEUS_FILE,
    MonitoringLayout,
    render_monitoring_texts,
    write_monitoring,
)
from orchestrator.monitoring.rules import REMEDIATIONS, RULES_FILE, RULES_TEST_FILE, RouteCase, alert_rules, route_cases
from orchestrator.tools.process import run_command

#: bounds of a single verification program run
CHECK_TIMEOUT_S = 60


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one verification step."""

    name: str
    ok: bool
    command: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "command": self.command, "detail": self.detail}


@dataclass(frozen=True)
class VerificationReport:
    """All checks of one environment's monitoring configuration."""

    env: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "ok": self.ok, "checks": [c.as_dict() for c in self.checks]}


def _run_check(name: str, argv: list[str], cwd: Path | None = None) -> CheckResult:
    """Run one checker; its output becomes the detail, a non-zero exit a failed check."""
    command = shlex.join(argv)
    try:
        result = run_command(argv, cwd=cwd, timeout=CHECK_TIMEOUT_S, check=False)
    except CommandError as exc:  # not installed, or timed out
        return CheckResult(name, False, command, exc.message)
    output = (result.stdout + result.stderr).strip()
    return CheckResult(name, result.returncode == 0, command, output)


def promtool_check_config_argv(path: Path) -> list[str]:
    """argv of `promtool check config` for `path`."""
    return ["promtool", "check", "config", str(path)]


def check_prometheus_config(path: Path) -> CheckResult:
    """`promtool check config` (also checks the rule files the config names)."""
    return _run_check("promtool check config", promtool_check_config_argv(path))


def check_rules(path: Path) -> CheckResult:
    """`promtool check rules` on a rule file."""
    return _run_check("promtool check rules", ["promtool", "check", "rules", str(path)])


def test_rules(path: Path) -> CheckResult:
    """`promtool test rules` on a rule test file (rule_files resolve relative to it)."""
    return _run_check("promtool test rules", ["promtool", "test", "rules", path.name], cwd=path.parent)


# pytest would collect a module-level `test_*` function imported into a test module.
test_rules.__test__ = False  # type: ignore[attr-defined]


def check_alertmanager_config(path: Path) -> CheckResult:
    """`amtool check-config` on an Alertmanager config."""
    return _run_check("amtool check-config", ["amtool", "check-config", str(path)])


def amtool_route_argv(path: Path, case: RouteCase) -> list[str]:
    """argv of the amtool routing assertion for `case`."""
    return ["amtool", "config", "routes", "test", f"--config.file={path}",
            f"--verify.receivers={case.receiver}", *case.amtool_labels()]


def test_routes(path: Path, cases: Sequence[RouteCase]) -> list[CheckResult]:
    """`amtool config routes test --verify.receivers` for every case (exit 1 on a mismatch)."""
    results = []
    for case in cases:
        name = f"route {case.labels.get('alertname', '?')} -> {case.receiver}"
        results.append(_run_check(name, amtool_route_argv(path, case)))
    return results


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


def verify_monitoring(loaded: LoadedEnvironment, hosts: Sequence[Host] | None = None,
                      playbooks_dir: Path | None = None) -> VerificationReport:
    """Render `loaded`'s monitoring files into a scratch directory and run every check on them.

    The scratch render points rule_files and the token file at the scratch directory, so that
    `promtool check config` also checks the very rules rendered with it.
    """
    hosts = list(hosts) if hosts is not None else fleet_hosts(loaded)
    with tempfile.TemporaryDirectory(prefix="orchestrate-monitoring-") as scratch:
        root = Path(scratch)
        layout = replace(MonitoringLayout(), config_dir=str(root))
        write_monitoring(root, render_monitoring_texts(loaded, hosts, layout))
        (root / HEAL_TOKEN_FILE).write_text("verification-token\n")
        checks = [
            check_rules(root / RULES_FILE),
            check_prometheus_config(root / PROMETHEUS_FILE),
            test_rules(root / RULES_TEST_FILE),
            check_alertmanager_config(root / ALERTMANAGER_FILE),
            *test_routes(root / ALERTMANAGER_FILE, route_cases(loaded.env)),
            *verify_dashboard(json.loads((root / DASHBOARD_FILE).read_text())),
        ]
    problems = check_heal_policy(loaded, playbooks_dir)
    checks.append(CheckResult(
        "heal policy", not problems, "check_heal_policy",
        "\n".join(f"{p.rule}: {p.message}" for p in problems),
    ))
    return VerificationReport(env=loaded.env.name, checks=checks)


def verify_dashboard(dashboard: dict[str, Any]) -> list[CheckResult]:
    """The Grafana dashboard's structure (schemaVersion, unique panel ids, grid, targets) and every
    query it makes, as recording rules through `promtool check rules`."""
    problems = check_dashboard(dashboard)
    results = [CheckResult("dashboard structure", not problems, "check_dashboard", "\n".join(problems))]
    with tempfile.TemporaryDirectory(prefix="orchestrate-dashboard-") as scratch:
        path = Path(scratch) / "dashboard-queries.rules.yml"
        path.write_text(yaml.safe_dump(promtool_rules(dashboard), sort_keys=False, width=10_000))
        found = check_rules(path)
    results.append(replace(found, name="dashboard queries (promtool check rules)"))
    return results
