"""Alerts read from the hosts' journals: a panic, a unit hitting its restart limit.

roles/log_events counts those lines on every host for its node exporter (textfile collector):

    orchestrate_log_events_total{kind="panic"|"restart_limit"}        counters, 0 from the start
    orchestrate_log_event_info{kind, unit, line}                      the latest line of each kind

so the alerts are ordinary Prometheus rules (Prometheus stays the one source of alerts), and each
alert carries the unit and the log line as labels, which its annotation quotes. They form their
own rule group `orchestrate-logs` in the rule file, with promtool tests beside the others'
(`add_log_rules`, `add_log_rule_tests`), and route to the default receiver: a panic is not
something a restart or a rollback decided by a machine should answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator.config.schema import Environment
from orchestrator.config.types import parse_duration
from orchestrator.monitoring.rules import DEFAULT_RECEIVER, NODE_JOB, RouteCase, format_duration

#: how long a logged event keeps its alert firing: a panic matters for a while after its restart
EVENT_WINDOW = "10m"


#: the rule group of the log alerts in the rule file
GROUP = "orchestrate-logs"


_HOST = "app-1"


_NODE_INSTANCE = "10.0.0.11:9100"


_UNIT = "hello.service"


_PANIC_LINE = ("thread 'main' (4242) panicked at src/main.rs:92:9: built with the panic feature: crashing on "
               "purpose after binding 0.0.0.0:8080")


_LIMIT_LINE = "hello.service: Start request repeated too quickly."


@dataclass(frozen=True)
class LogAlert:
    """One alert on a kind of log line."""

    name: str
    kind: str
    """The `kind` label of orchestrate_log_events_total."""
    summary: str
    description: str

    def expr(self) -> str:
        selector = f'job="{NODE_JOB}",kind="{self.kind}"'
        return (f"(increase(orchestrate_log_events_total{{{selector}}}[{EVENT_WINDOW}]) > 0)"
                f" * on (host, kind) group_left (unit, line) orchestrate_log_event_info{{{selector}}}")

    def labels(self, env: Environment) -> dict[str, str]:
        return {"severity": "critical", "remediation": "none", "service": env.service.name}

    def annotations(self, **values: str) -> dict[str, str]:
        """Annotations with {host}, {unit} and {line} filled (Prometheus templates by default)."""
        fill = {"host": "{{ $labels.host }}", "unit": "{{ $labels.unit }}", "line": "{{ $labels.line }}", **values}
        return {"summary": self.summary.format(**fill), "description": self.description.format(**fill)}


def log_alerts() -> list[LogAlert]:
    """The log alerts every environment with central logs ships."""
    return [
        LogAlert(
            name="ServicePanicked",
            kind="panic",
            summary="{unit} panicked on {host}",
            description=(f"{{host}} logged within the last {EVENT_WINDOW}: {{line}} - the central log of "
                         "{host} on the monitoring host has what came before."),
        ),
        LogAlert(
            name="UnitRestartLimitHit",
            kind="restart_limit",
            summary="systemd gave up restarting {unit} on {host}",
            description=(f"{{host}} logged within the last {EVENT_WINDOW}: {{line}} - the unit stays down until "
                         "it is started again (a deploy, a rollback or systemctl start)."),
        ),
    ]


def log_rules_group(env: Environment) -> dict[str, Any]:
    """The rule group of the log alerts, each with `for: monitoring.alert_for`."""
    rules = [
        {"alert": alert.name, "expr": alert.expr(), "for": env.monitoring.alert_for, "labels": alert.labels(env),
         "annotations": alert.annotations()}
        for alert in log_alerts()
    ]
    return {"name": GROUP, "interval": env.monitoring.evaluation_interval, "rules": rules}


def add_log_rules(document: dict[str, Any], env: Environment) -> dict[str, Any]:
    """`document` (a rule file's mapping) with the log alerts' group added when `env` has central logs."""
    if not env.monitoring.logs.enabled:
        return document
    return {**document, "groups": [*document.get("groups", []), log_rules_group(env)]}


def _series(labels: dict[str, str], values: str, metric: str) -> dict[str, str]:
    body = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{body}}}", "values": values}


def log_rule_tests(env: Environment) -> list[dict[str, Any]]:
    """promtool tests of the log alerts: firing with the line quoted, quiet without events, and quiet
    again once the event is older than the window."""
    scrape = parse_duration(env.monitoring.scrape_interval)
    evaluation = parse_duration(env.monitoring.evaluation_interval)
    for_ = parse_duration(env.monitoring.alert_for)
    window = parse_duration(EVENT_WINDOW)
    # the event is logged after `before` quiet scrapes; the alert has fired for sure by `fire_at`
    before = 3
    fire_at = math.ceil((before + 2) * scrape / evaluation + for_ / evaluation + 2) * evaluation
    gone_at = math.ceil(((before + 1) * scrape + window + 2 * scrape) / evaluation + 1) * evaluation
    total = math.ceil(gone_at / scrape) + 2
    node = {"job": NODE_JOB, "host": _HOST, "instance": _NODE_INSTANCE}
    tests = []
    for alert, line in zip(log_alerts(), (_PANIC_LINE, _LIMIT_LINE), strict=True):
        kind = {**node, "kind": alert.kind}
        counter_up = _series(kind, f"0x{before} 1x{total - before}", "orchestrate_log_events_total")
        info = _series({**kind, "unit": _UNIT, "line": line}, f"_x{before + 1} 1x{total - before - 1}",
                       "orchestrate_log_event_info")
        quiet = _series(kind, f"0x{total}", "orchestrate_log_events_total")
        expected = {
            "exp_labels": {**kind, "unit": _UNIT, "line": line, **alert.labels(env)},
            "exp_annotations": alert.annotations(host=_HOST, unit=_UNIT, line=line),
        }

        def case(name: str, series: list[dict[str, str]], at: float, alerts: list[dict[str, Any]],
                 alertname: str = alert.name) -> dict[str, Any]:
            return {"name": name, "interval": env.monitoring.scrape_interval, "input_series": series,
                    "alert_rule_test": [{"eval_time": format_duration(at), "alertname": alertname,
                                         "exp_alerts": alerts}]}

        tests += [
            case(f"{alert.name} fires with the logged line when a {alert.kind} line is counted",
                 [counter_up, info], fire_at, [expected]),
            case(f"{alert.name} stays quiet while no {alert.kind} line is counted", [quiet], fire_at, []),
            case(f"{alert.name} resolves once the {alert.kind} line is older than {EVENT_WINDOW}",
                 [counter_up, info], gone_at, []),
        ]
    return tests


def add_log_rule_tests(document: dict[str, Any], env: Environment) -> dict[str, Any]:
    """`document` (a promtool test file's mapping) with the log alerts' tests added."""
    if not env.monitoring.logs.enabled:
        return document
    return {**document, "tests": [*document.get("tests", []), *log_rule_tests(env)]}


def log_route_cases(env: Environment) -> list[RouteCase]:
    """Routing cases of the log alerts: every one goes to the default receiver."""
    if not env.monitoring.logs.enabled:
        return []
    return [RouteCase(labels={"alertname": alert.name, "env": env.name, "host": _HOST, **alert.labels(env)},
                      receiver=DEFAULT_RECEIVER)
            for alert in log_alerts()]
