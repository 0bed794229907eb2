"""The alert rules every environment ships, their promtool unit tests and Alertmanager routing cases.

Each rule carries a `remediation` label that the heal policy acts on; the scrape job names the
rules select on are defined here and shared with the traffic gates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from orchestrator.config.schema import Environment
from orchestrator.config.types import parse_duration

#: remediations a rule may ask for; every one but `none` is a playbook playbooks/remediate-<name>.yml
REMEDIATIONS = ("restart", "rollback", "none")


Remediation = Literal["restart", "rollback", "none"]


#: Alertmanager receivers: remediable alerts go to `heal`, everything else to `default`
HEAL_RECEIVER = "heal"


DEFAULT_RECEIVER = "default"


#: scrape job names the rules select on
#: the service's own /metrics on every app host (only when service.metrics names them)
SERVICE_JOB = "service"


#: the blackbox exporter on the monitoring host probing the health path of every app host
HEALTH_JOB = "health"


NODE_JOB = "node"


PROMETHEUS_JOB = "prometheus"


#: scrape job of HAProxy's exporter on the load-balancer hosts (read by the rules and the traffic gates)
HAPROXY_JOB = "haproxy"


#: the blackbox exporter's module that probes a health path (monitoring/files.py renders it)
HEALTH_MODULE = "orchestrate_health"


#: Metric names the rules, the traffic gates and the dashboards read; the only place they are spelled.
#: blackbox exporter: 1 when the probe got the expected answer (200), else 0
PROBE_SUCCESS = "probe_success"
#: blackbox exporter: the HTTP status the probe got; 0 when nothing answered (refused, timed out)
PROBE_STATUS = "probe_http_status_code"
#: HAProxy's exporter, per server of a backend (labels proxy, server; responses also code="2xx"...)
HAPROXY_RESPONSES = "haproxy_server_http_responses_total"
HAPROXY_CONNECTION_ERRORS = "haproxy_server_connection_errors_total"
HAPROXY_RESPONSE_ERRORS = "haproxy_server_response_errors_total"
HAPROXY_RESPONSE_TIME = "haproxy_server_response_time_average_seconds"
#: HAProxy's class of failed responses
HAPROXY_ERROR_CODE = 'code="5xx"'


#: share of health probes that must fail over the rate window before HealthFailing holds
HEALTH_FAILURE_RATIO = 0.5


@dataclass(frozen=True)
class ErrorCounters:
    """Where an environment's error ratio comes from: a counter of handled requests and the matchers
    selecting its failures, with the labels that name a host.

    `service`: the service's own counter (service.metrics) scraped by job `service`, per host and
    instance. `haproxy`: HAProxy's responses per server of the service's backend (the server is
    the app host's inventory name), for a service without metrics behind a load balancer.
    """

    source: Literal["service", "haproxy"]
    metric: str
    selector: str
    """Matchers of every request (job and, for HAProxy, the backend)."""
    errors: str
    """Matchers that add to `selector` to select the failed requests."""
    by: str
    """The labels of one host: `host, instance` or `server`."""

    def requests(self, extra: str = "") -> str:
        """The counter's series of every request (with `extra` matchers)."""
        return f"{self.metric}{{{self.selector}{',' + extra if extra else ''}}}"

    def failed(self, extra: str = "") -> str:
        """The counter's series of the failed requests (with `extra` matchers)."""
        return f"{self.metric}{{{self.selector},{self.errors}{',' + extra if extra else ''}}}"


def error_counters(env: Environment) -> ErrorCounters | None:
    """The error counters of `env`: the service's when service.metrics names them, else HAProxy's
    when the environment has a load balancer, else None (nothing counts the requests)."""
    metrics = env.service.metrics
    if metrics is not None:
        return ErrorCounters("service", metrics.requests, f'job="{SERVICE_JOB}"', metrics.errors, "host, instance")
    if env.terraform.vars.lb_count > 0:
        return ErrorCounters("haproxy", HAPROXY_RESPONSES, f'job="{HAPROXY_JOB}",proxy="{env.service.name}"',
                             HAPROXY_ERROR_CODE, "server")
    return None


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
    """The alert rules of `env`, each with `for: monitoring.alert_for`.

    ServiceDown and HealthFailing read the blackbox exporter's probes of the health path, so they
    hold for any service; HighErrorRate reads the error counters (`error_counters`) and is left
    out when nothing counts the service's requests (no metrics, no load balancer).
    """
    window = rate_window(env)
    service = env.service.name
    health = env.service.health.path
    probe = f'job="{HEALTH_JOB}"'
    for_ = env.monitoring.alert_for
    rules = [
        AlertRule(
            name="ServiceDown",
            # Nothing answered the probe (refused, reset, timed out). A host that is down
            # altogether is HostUnreachable: restarting its unit cannot work.
            expr=f'{PROBE_STATUS}{{{probe}}} == 0 unless on (host) up{{job="{NODE_JOB}"}} == 0',
            severity="critical",
            remediation="restart",
            summary=f"{service} is down on {{host}}",
            description=(
                f"Nothing answers GET {health} on {{instance}} while the host does: the {service} unit "
                "is not serving. Remediation restarts it."
            ),
            for_=for_,
        ),
        AlertRule(
            name="HealthFailing",
            # The service answers, but most probes of its health path over the window got another
            # status than 200 (ServiceDown covers a service that does not answer at all).
            expr=(
                f"(1 - avg_over_time({PROBE_SUCCESS}{{{probe}}}[{window}])) > {HEALTH_FAILURE_RATIO}"
                f" and on (host, instance) {PROBE_STATUS}{{{probe}}} > 0"
            ),
            severity="critical",
            remediation="restart",
            summary=f"{service} on {{host}} is up but not healthy",
            description=(
                f"{{instance}} answers, but most GET {health} probes over the last {window} did not get "
                f"200. Remediation restarts it."
            ),
            for_=for_,
            clears_in=window,
        ),
    ]
    counters = error_counters(env)
    if counters is not None:
        rules.append(_high_error_rate(env, counters, window))
    rules.append(AlertRule(
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
    ))
    return rules


def _high_error_rate(env: Environment, counters: ErrorCounters, window: str) -> AlertRule:
    threshold = env.monitoring.error_ratio_threshold
    by = f"sum by ({counters.by})"
    ratio = (f"{by} (rate({counters.failed()}[{window}])) / {by} (rate({counters.requests()}[{window}]))"
             f" > {threshold:g}")
    if counters.source == "haproxy":
        # HAProxy names the app host `server`; the heal policy and the routing read `host`
        expr = f'label_replace({ratio}, "host", "$1", "server", "(.+)")'
        seen = "through the load balancer (HAProxy's responses of server {host})"
    else:
        expr = ratio
        matchers = counters.errors.replace("{", "{{").replace("}", "}}")  # literal in a str.format template
        seen = f"by {{instance}} ({counters.metric} matching {matchers})"
    return AlertRule(
        name="HighErrorRate",
        expr=expr,
        severity="critical",
        remediation="rollback",
        summary=f"{env.service.name} on {{host}} fails {{percent}} of its requests",
        description=(
            f"Over the last {window}, {{percent}} of the requests answered {seen} failed "
            f"(threshold {threshold:.2%}). Remediation rolls the environment back to the previous release."
        ),
        for_=env.monitoring.alert_for,
        clears_in=window,
    )


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


_LB_INSTANCE = "10.0.0.20:8405"


#: label values tried when a test needs a series that the `errors` matchers select (or do not)
_FAILED_VALUES = ("5xx", "500", "503", "502", "5XX", "error", "errors", "failed", "failure", "fail", "true", "1")
_OK_VALUES = ("2xx", "200", "ok", "OK", "success", "succeeded", "false", "0")


_MATCHER_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _matches(op: str, pattern: str, value: str) -> bool:
    if op == "=":
        return value == pattern
    if op == "!=":
        return value != pattern
    try:
        found = re.fullmatch(pattern, value) is not None
    except re.error:
        return False
    return found if op == "=~" else not found


def example_labels(errors: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """Label values of a failed and of a good request under the `errors` matchers (pure), for the
    rules' promtool tests: ({label: value} the matchers select, {label: value} they do not). None
    when no such values can be found among the usual ones (the tests then leave that rule out)."""
    matchers = []
    for match in _MATCHER_RE.finditer(errors):
        value = match.group(3).encode().decode("unicode_escape")
        matchers.append((match.group(1), match.group(2), value))
    if not matchers:
        return None
    failed: dict[str, str] = {}
    for label, op, pattern in matchers:
        candidates = [pattern] if op == "=" else list(_FAILED_VALUES) + list(_OK_VALUES)
        found = next((c for c in candidates if _matches(op, pattern, c)), None)
        if found is None:
            return None
        failed[label] = found
    # a good request: the first matcher no longer holds, the others keep their values
    label, op, pattern = matchers[0]
    good_value = next((c for c in (*_OK_VALUES, *_FAILED_VALUES) if not _matches(op, pattern, c)), None)
    if good_value is None:
        return None
    return failed, {**failed, label: good_value}


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{body}}}", "values": values}


def _parse_selector(selector: str) -> dict[str, str]:
    """{label: value} of `a="x",b="y"` (equality matchers only; the jobs and backends of the rules)."""
    return {m.group(1): m.group(3) for m in _MATCHER_RE.finditer(selector)}


def _host_series(t: _Timing, *, status: int = 200, node_up: int = 1) -> list[dict[str, str]]:
    """The probe and node series of one app host: status 0 is a service that does not answer."""
    n = t.samples
    probe = {"job": HEALTH_JOB, "host": _HOST, "instance": _INSTANCE}
    success = 1 if status == 200 else 0
    return [
        _series(PROBE_SUCCESS, probe, f"{success}x{n}"),
        _series(PROBE_STATUS, probe, f"{status}x{n}"),
        _series("up", {"job": NODE_JOB, "host": _HOST, "instance": _NODE_INSTANCE}, f"{node_up}x{n}"),
    ]


def _one_failed_probe(t: _Timing) -> tuple[list[dict[str, str]], str]:
    """The series of an app host whose health probe got no answer once (a service slow for a
    moment), the probes before and after it good; and the last evaluation time that still reads
    the failed probe. A `for` shorter than a probe interval fires there."""
    before = 3
    total = max(t.samples, before + 4)

    def failed_once(good: int) -> str:
        # good probes at 0..before, the failed one at before+1, good ones after it
        return f"{good}x{before} 0 {good}x{total - before - 2}"

    probe = {"job": HEALTH_JOB, "host": _HOST, "instance": _INSTANCE}
    series = [
        _series(PROBE_SUCCESS, probe, failed_once(1)),
        _series(PROBE_STATUS, probe, failed_once(200)),
        _series("up", {"job": NODE_JOB, "host": _HOST, "instance": _NODE_INSTANCE}, f"1x{total}"),
    ]
    failed_at = (before + 1) * t.scrape
    last_read = (math.ceil((failed_at + t.scrape) / t.evaluation - 1e-9) - 1) * t.evaluation
    return series, format_duration(last_read)


def _request_series(t: _Timing, counters: ErrorCounters, labels: tuple[dict[str, str], dict[str, str]], *,
                    ok: int, fail: int) -> list[dict[str, str]]:
    """The error counters of one app host: `ok` good and `fail` failed requests per scrape."""
    n = t.samples
    base = _parse_selector(counters.selector)
    if counters.source == "haproxy":
        base.update(server=_HOST, host="lb-1", instance=_LB_INSTANCE)
    else:
        base.update(host=_HOST, instance=_INSTANCE)
    failed, good = labels
    return [_series(counters.metric, {**base, **good}, f"0+{ok}x{n}"),
            _series(counters.metric, {**base, **failed}, f"0+{fail}x{n}")]


def _expect(rule: AlertRule, env: Environment, labels: dict[str, str], percent: str = "") -> dict[str, Any]:
    return {
        "exp_labels": {**labels, **rule.labels(env)},
        "exp_annotations": rule.annotations(host=labels["host"], instance=labels.get("instance", ""),
                                            percent=percent),
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

    tests = [
        case("ServiceDown fires when nothing answers the health probe and the host is up",
             _host_series(t, status=0), "ServiceDown",
             [_expect(rules["ServiceDown"], env, {**svc, "job": HEALTH_JOB})]),
        case("ServiceDown stays quiet while the service answers",
             _host_series(t), "ServiceDown", []),
        case("ServiceDown stays quiet when the whole host is unreachable (HostUnreachable covers it)",
             _host_series(t, status=0, node_up=0), "ServiceDown", []),
        case("HealthFailing fires when the health path answers another status than 200",
             _host_series(t, status=503), "HealthFailing",
             [_expect(rules["HealthFailing"], env, {**svc, "job": HEALTH_JOB})]),
        case("HealthFailing stays quiet while the health path answers 200",
             _host_series(t), "HealthFailing", []),
        case("HealthFailing stays quiet when nothing answers (ServiceDown covers it)",
             _host_series(t, status=0), "HealthFailing", []),
        case("HostUnreachable fires when the node exporter stops answering",
             _host_series(t, status=0, node_up=0), "HostUnreachable",
             [_expect(rules["HostUnreachable"], env,
                      {"job": NODE_JOB, "host": _HOST, "instance": _NODE_INSTANCE})]),
        case("HostUnreachable stays quiet while the host answers",
             _host_series(t), "HostUnreachable", []),
    ]
    counters = error_counters(env)
    labels = example_labels(counters.errors) if counters is not None else None
    if counters is not None and labels is not None:
        rule = rules["HighErrorRate"]
        # fires on all-failed traffic (100% beats any threshold below 1), quiet at half the threshold
        quiet_ok = math.ceil(2 / env.monitoring.error_ratio_threshold)
        fired = {"host": _HOST, "server": _HOST} if counters.source == "haproxy" else svc
        tests += [
            case("HighErrorRate fires above monitoring.error_ratio_threshold",
                 _host_series(t) + _request_series(t, counters, labels, ok=0, fail=5), "HighErrorRate",
                 [_expect(rule, env, fired, percent="100%")]),
            case("HighErrorRate stays quiet below the threshold",
                 _host_series(t) + _request_series(t, counters, labels, ok=quiet_ok, fail=1), "HighErrorRate", []),
        ]
    one_failed, last_read = _one_failed_probe(t)
    tests.append(case("ServiceDown stays quiet after a single failed probe (the next one answers)",
                      one_failed, "ServiceDown", [], eval_time=last_read))
    if t.for_ >= 2 * t.evaluation:
        # Before `for` has passed the alert is only pending, and pending alerts are not sent.
        early = format_duration(t.for_ - t.evaluation)
        tests.append(case("ServiceDown waits for monitoring.alert_for before firing",
                          _host_series(t, status=0), "ServiceDown", [], eval_time=early))
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
