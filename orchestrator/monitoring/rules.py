"""The alert rules every environment ships, their promtool unit tests and Alertmanager routing cases.

Each rule carries a `remediation` label that the heal policy acts on; the scrape job names the
rules select on are defined here and shared with the traffic gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from orchestrator.config.schema import Environment, parse_duration

#: remediations a rule may ask for; every one but `none` is a playbook playbooks/remediate-<name>.yml
REMEDIATIONS = ("restart", "rollback", "none")


Remediation = Literal["restart", "rollback", "none"]


#: Alertmanager receivers: remediable alerts go to `heal`, everything else to `default`
HEAL_RECEIVER = "heal"


DEFAULT_RECEIVER = "default"


#: scrape job names the rules select on
SERVICE_JOB = "service"


NODE_JOB = "node"


PROMETHEUS_JOB = "prometheus"


#: scrape job of HAProxy's exporter on the load-balancer hosts (read by the traffic gates)
HAPROXY_JOB = "haproxy"


#: the service's metrics the rules (and the traffic gates and the dashboard) select on
REQUESTS_METRIC = "hello_requests_total"
"""Counter of answered requests, labels `path` and `code`."""


BUILD_INFO_METRIC = "hello_build_info"
"""Always 1, labels `version` and `build_id`: present only when the binary is ours."""


#: HAProxy exporter metrics of the app servers behind the load balancer (label `server`: the host)
HAPROXY_RESPONSES_METRIC = "haproxy_server_http_responses_total"


HAPROXY_CONNECTION_ERRORS_METRIC = "haproxy_server_connection_errors_total"


HAPROXY_RESPONSE_ERRORS_METRIC = "haproxy_server_response_errors_total"


HAPROXY_RESPONSE_TIME_METRIC = "haproxy_server_response_time_average_seconds"


#: share of /healthz answers that must fail before HealthFailing holds
HEALTH_FAILURE_RATIO = 0.5


def format_duration(seconds: float) -> str:
    """A Prometheus duration for `seconds` (`90` -> `1m30s`, `0.5` -> `500ms`)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def rate_window(env: Environment) -> str:
    """Range of the rate() windows: four scrapes (so a rate always has samples), at least 20 s."""
    scrape = parse_duration(env.monitoring.scrape_interval)
    evaluation = parse_duration(env.monitoring.evaluation_interval)
    return format_duration(max(4 * scrape, 4 * evaluation, 20.0))


#: How annotation placeholders are written in a Prometheus rule; the rule test fills in real values.
_PROMETHEUS_PLACEHOLDERS = {
    "host": "{{ $labels.host }}",
    "instance": "{{ $labels.instance }}",
    "percent": "{{ $value | humanizePercentage }}",
}


@dataclass(frozen=True)
class AlertRule:
    """One alert: PromQL, severity, what to do about it and how to explain it.

    `summary` and `description` are str.format templates over {host}, {instance} and {percent};
    they become Prometheus templates in the rule file and exact strings in its promtool test.
    `clears_in` is how long the expression can still hold after the cause is fixed (the range of
    its rate windows): the healing throttle must cover it, or a fixed alert is remediated again.
    """

    name: str
    expr: str
    severity: Literal["critical", "warning"]
    remediation: Remediation
    summary: str
    description: str
    for_: str
    clears_in: str = "0s"

    def annotations(self, **values: str) -> dict[str, str]:
        """Annotations with placeholders filled from `values` (Prometheus templates by default)."""
        fill = {**_PROMETHEUS_PLACEHOLDERS, **values}
        return {"summary": self.summary.format(**fill), "description": self.description.format(**fill)}

    def labels(self, env: Environment) -> dict[str, str]:
        """The labels the rule adds to its alerts."""
        return {"severity": self.severity, "remediation": self.remediation, "service": env.service.name}


def alert_rules(env: Environment) -> list[AlertRule]:
    """The alert rules of `env`, each with `for: monitoring.alert_for`."""
    window = rate_window(env)
    threshold = env.monitoring.error_ratio_threshold
    service = env.service.name
    job = f'job="{SERVICE_JOB}"'
    for_ = env.monitoring.alert_for
    by = "sum by (host, instance)"
    health = env.service.health.path
    return [
        AlertRule(
            name="ServiceDown",
            # A host that is down altogether is HostUnreachable; restarting its unit cannot work.
            expr=f'up{{{job}}} == 0 unless on (host) up{{job="{NODE_JOB}"}} == 0',
            severity="critical",
            remediation="restart",
            summary=f"{service} is down on {{host}}",
            description=(
                f"Prometheus cannot scrape {{instance}} (job {SERVICE_JOB}) while the host answers: "
                f"the {service} unit is not serving. Remediation restarts it."
            ),
            for_=for_,
        ),
        AlertRule(
            name="HealthFailing",
            # Two real signals of the service: most /healthz probes (deploy gates, load balancer)
            # answered 5xx, or /metrics answers without hello_build_info (not our binary).
            expr=(
                f'({by} (rate({REQUESTS_METRIC}{{{job},path="{health}",code=~"5.."}}[{window}]))'
                f' / {by} (rate({REQUESTS_METRIC}{{{job},path="{health}"}}[{window}]))'
                f" > {HEALTH_FAILURE_RATIO})"
                f" or ({by} (up{{{job}}}) == 1"
                f" unless on (host, instance) {by} ({BUILD_INFO_METRIC}{{{job}}}) == 1)"
            ),
            severity="critical",
            remediation="restart",
            summary=f"{service} on {{host}} is up but not healthy",
            description=(
                f"{{instance}} answers /metrics, but most {health} probes over the last {window} failed "
                f"or it does not report {BUILD_INFO_METRIC}. Remediation restarts it."
            ),
            for_=for_,
            clears_in=window,
        ),
        AlertRule(
            name="HighErrorRate",
            # Prometheus' own scrapes of /metrics always succeed and would dilute the ratio.
            expr=(
                f'{by} (rate({REQUESTS_METRIC}{{{job},path!="/metrics",code=~"5.."}}[{window}]))'
                f' / {by} (rate({REQUESTS_METRIC}{{{job},path!="/metrics"}}[{window}]))'
                f" > {threshold:g}"
            ),
            severity="critical",
            remediation="rollback",
            summary=f"{service} on {{host}} answers {{percent}} of requests with 5xx",
            description=(
                f"Over the last {window}, {{percent}} of the requests to {{instance}} failed with 5xx "
                f"(threshold {threshold:.2%}). Remediation rolls the environment back to the previous release."
            ),
            for_=for_,
            clears_in=window,
        ),
        AlertRule(
            name="HostUnreachable",
            expr=f'up{{job="{NODE_JOB}"}} == 0',
            severity="critical",
            remediation="none",
            summary="host {host} is unreachable",
            description=(
                "Prometheus cannot scrape the node exporter on {instance}: the host is down or cut off. "
                "No automatic remediation; an operator must look."
            ),
            for_=for_,
        ),
    ]


def rules_document(env: Environment) -> dict[str, Any]:
    """The Prometheus rule file as a YAML-ready mapping."""
    rules = [
        {
            "alert": rule.name,
            "expr": rule.expr,
            "for": rule.for_,
            "labels": rule.labels(env),
            "annotations": rule.annotations(),
        }
        for rule in alert_rules(env)
    ]
    return {"groups": [{"name": "orchestrate", "interval": env.monitoring.evaluation_interval, "rules": rules}]}


@dataclass(frozen=True)
class _Timing:
    scrape: float
    evaluation: float
    for_: float
    window: float

    @property
    def fire_at(self) -> float:
        """An evaluation time by which an alert true from t=0 has fired for sure."""
        raw = self.window + self.for_ + 2 * self.scrape + 2 * self.evaluation
        return math.ceil(raw / self.evaluation) * self.evaluation

    @property
    def samples(self) -> int:
        return math.ceil(self.fire_at / self.scrape) + 2


def _timing(env: Environment) -> _Timing:
    return _Timing(
        scrape=parse_duration(env.monitoring.scrape_interval),
        evaluation=parse_duration(env.monitoring.evaluation_interval),
        for_=parse_duration(env.monitoring.alert_for),
        window=parse_duration(rate_window(env)),
    )


_HOST = "app-1"


_INSTANCE = "10.0.0.11:8080"


_NODE_INSTANCE = "10.0.0.11:9100"


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{body}}}", "values": values}


def _service_series(t: _Timing, *, up: int = 1, build_info: bool = True, node_up: int = 1,
                    health_ok: int = 1, health_fail: int = 0, ok: int = 4, fail: int = 0) -> list[dict[str, str]]:
    """Input series of one app host: counters grow by the given amount per scrape."""
    n = t.samples
    svc = {"job": SERVICE_JOB, "host": _HOST, "instance": _INSTANCE}
    series = [
        _series("up", svc, f"{up}x{n}"),
        _series("up", {"job": NODE_JOB, "host": _HOST, "instance": _NODE_INSTANCE}, f"{node_up}x{n}"),
        _series(REQUESTS_METRIC, {**svc, "path": "/healthz", "code": "200"}, f"0+{health_ok}x{n}"),
        _series(REQUESTS_METRIC, {**svc, "path": "/healthz", "code": "500"}, f"0+{health_fail}x{n}"),
        _series(REQUESTS_METRIC, {**svc, "path": "/", "code": "200"}, f"0+{ok}x{n}"),
        _series(REQUESTS_METRIC, {**svc, "path": "/", "code": "500"}, f"0+{fail}x{n}"),
        _series(REQUESTS_METRIC, {**svc, "path": "/metrics", "code": "200"}, f"0+1x{n}"),
    ]
    if build_info:
        series.append(_series(BUILD_INFO_METRIC, {**svc, "version": "0.1.0", "build_id": "test"}, f"1x{n}"))
    return series


def _expect(rule: AlertRule, env: Environment, labels: dict[str, str], percent: str = "") -> dict[str, Any]:
    return {
        "exp_labels": {**labels, **rule.labels(env)},
        "exp_annotations": rule.annotations(host=labels["host"], instance=labels["instance"], percent=percent),
    }


def rules_test_document(env: Environment) -> dict[str, Any]:
    """promtool unit tests for every rule of `env`: firing and not firing, with exact annotations."""
    t = _timing(env)
    rules = {rule.name: rule for rule in alert_rules(env)}
    at = format_duration(t.fire_at)
    interval = env.monitoring.scrape_interval
    svc = {"host": _HOST, "instance": _INSTANCE}

    def case(name: str, series: list[dict[str, str]], alert: str, alerts: list[dict[str, Any]],
             eval_time: str = at) -> dict[str, Any]:
        return {
            "name": name,
            "interval": interval,
            "input_series": series,
            "alert_rule_test": [{"eval_time": eval_time, "alertname": alert, "exp_alerts": alerts}],
        }

    # HighErrorRate fires on all-5xx traffic (100% beats any threshold below 1) and stays quiet
    # when 5xx answers are present but at half the threshold.
    quiet_ok = math.ceil(2 / env.monitoring.error_ratio_threshold)
    tests = [
        case("ServiceDown fires when the service stops answering and its host is up",
             _service_series(t, up=0), "ServiceDown",
             [_expect(rules["ServiceDown"], env, {**svc, "job": SERVICE_JOB})]),
        case("ServiceDown stays quiet while the service answers",
             _service_series(t), "ServiceDown", []),
        case("ServiceDown stays quiet when the whole host is unreachable (HostUnreachable covers it)",
             _service_series(t, up=0, node_up=0), "ServiceDown", []),
        case("HealthFailing fires when most health probes answer 5xx",
             _service_series(t, health_ok=0, health_fail=1), "HealthFailing",
             [_expect(rules["HealthFailing"], env, svc)]),
        case("HealthFailing fires when the target does not report hello_build_info",
             _service_series(t, build_info=False), "HealthFailing",
             [_expect(rules["HealthFailing"], env, svc)]),
        case("HealthFailing stays quiet while health probes pass",
             _service_series(t, health_ok=1, health_fail=0), "HealthFailing", []),
        case("HighErrorRate fires above monitoring.error_ratio_threshold",
             _service_series(t, health_ok=0, ok=0, fail=5), "HighErrorRate",
             [_expect(rules["HighErrorRate"], env, svc, percent="100%")]),
        case("HighErrorRate stays quiet below the threshold",
             _service_series(t, health_ok=0, ok=quiet_ok, fail=1), "HighErrorRate", []),
        case("HostUnreachable fires when the node exporter stops answering",
             _service_series(t, up=0, node_up=0), "HostUnreachable",
             [_expect(rules["HostUnreachable"], env,
                      {"job": NODE_JOB, "host": _HOST, "instance": _NODE_INSTANCE})]),
        case("HostUnreachable stays quiet while the host answers",
             _service_series(t), "HostUnreachable", []),
    ]
    if t.for_ >= 2 * t.evaluation:
        # Before `for` has passed the alert is only pending, and pending alerts are not sent.
        early = format_duration(t.for_ - t.evaluation)
        tests.append(case("ServiceDown waits for monitoring.alert_for before firing",
                          _service_series(t, up=0), "ServiceDown", [], eval_time=early))
    return {
        "rule_files": [Path(RULES_FILE).name],
        "evaluation_interval": env.monitoring.evaluation_interval,
        "tests": tests,
    }


@dataclass(frozen=True)
class RouteCase:
    """Labels of an alert and the receiver Alertmanager must pick for it."""

    labels: dict[str, str]
    receiver: str

    def amtool_labels(self) -> list[str]:
        return [f"{key}={value}" for key, value in sorted(self.labels.items())]


def receiver_for(remediation: str) -> str:
    """The receiver that alerts with this remediation label must reach."""
    return HEAL_RECEIVER if remediation in ("restart", "rollback") else DEFAULT_RECEIVER


def route_cases(env: Environment) -> list[RouteCase]:
    """One routing case per rule (with the labels its alerts carry), plus an unlabelled alert."""
    cases = [
        RouteCase(
            labels={"alertname": rule.name, "env": env.name, "host": _HOST, **rule.labels(env)},
            receiver=receiver_for(rule.remediation),
        )
        for rule in alert_rules(env)
    ]
    cases.append(RouteCase(labels={"alertname": "Watchdog", "env": env.name}, receiver=DEFAULT_RECEIVER))
    return cases


RULES_FILE = "rules/orchestrate.rules.yml"


RULES_TEST_FILE = "rules/orchestrate.rules.test.yml"
