"""Prometheus and Alertmanager configuration, alert rules and their tests, and their verification.

Everything is rendered from the environment file (`monitoring:`, `healing:`, `service.port`) and the
fleet's inventory into `.orchestrate/<env>/monitoring/`:

    prometheus.yml                      scrape jobs service (every app host), node (every host), haproxy
                                        (every lb host), prometheus
    rules/orchestrate.rules.yml         ServiceDown, HealthFailing, HighErrorRate, HostUnreachable
    rules/orchestrate.rules.test.yml    a promtool unit test per rule, firing and not firing
    alertmanager.yml                    remediable alerts -> the heal webhook (bearer token), others -> default
    routes.json                         the routing cases `amtool config routes test` must confirm

Each alert ships as a bundle: the rule, its promtool test, its routing case and the remediation
playbook its `remediation` label names (playbooks/remediate-<name>.yml); `check_heal_policy`
verifies that last link statically. Verification runs the real promtool and amtool.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import secrets
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.config import Environment, LoadedEnvironment, TerraformLocal, parse_duration
from orchestrator.errors import AnsibleError, CommandError, OrchestratorError, UsageError
from orchestrator.inventory import Host, allowed_networks, fleet_hosts
from orchestrator.render import render_template
from orchestrator.tools.ansible import PlaybookResult, PlaybookRun, new_run_id, run_playbook
from orchestrator.tools.process import run_command

MONITORING_DIR = "monitoring"
RULES_FILE = "rules/orchestrate.rules.yml"
RULES_TEST_FILE = "rules/orchestrate.rules.test.yml"
PROMETHEUS_FILE = "prometheus.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
ROUTES_FILE = "routes.json"
HEAL_TOKEN_FILE = "heal.token"  # noqa: S105 - a file name, not a secret

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

#: share of /healthz answers that must fail before HealthFailing holds
HEALTH_FAILURE_RATIO = 0.5

#: bounds of a single verification program run
CHECK_TIMEOUT_S = 60


class MonitoringError(OrchestratorError):
    """Monitoring configuration could not be rendered or failed its checks."""


# --- durations -----------------------------------------------------------------------------


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


# --- rules ---------------------------------------------------------------------------------

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
                f'({by} (rate(hello_requests_total{{{job},path="{health}",code=~"5.."}}[{window}]))'
                f' / {by} (rate(hello_requests_total{{{job},path="{health}"}}[{window}]))'
                f" > {HEALTH_FAILURE_RATIO})"
                f" or ({by} (up{{{job}}}) == 1"
                f" unless on (host, instance) {by} (hello_build_info{{{job}}}) == 1)"
            ),
            severity="critical",
            remediation="restart",
            summary=f"{service} on {{host}} is up but not healthy",
            description=(
                f"{{instance}} answers /metrics, but most {health} probes over the last {window} failed "
                f"or it does not report hello_build_info. Remediation restarts it."
            ),
            for_=for_,
            clears_in=window,
        ),
        AlertRule(
            name="HighErrorRate",
            # Prometheus' own scrapes of /metrics always succeed and would dilute the ratio.
            expr=(
                f'{by} (rate(hello_requests_total{{{job},path!="/metrics",code=~"5.."}}[{window}]))'
                f' / {by} (rate(hello_requests_total{{{job},path!="/metrics"}}[{window}]))'
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


# --- rule tests ----------------------------------------------------------------------------


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
        _series("hello_requests_total", {**svc, "path": "/healthz", "code": "200"}, f"0+{health_ok}x{n}"),
        _series("hello_requests_total", {**svc, "path": "/healthz", "code": "500"}, f"0+{health_fail}x{n}"),
        _series("hello_requests_total", {**svc, "path": "/", "code": "200"}, f"0+{ok}x{n}"),
        _series("hello_requests_total", {**svc, "path": "/", "code": "500"}, f"0+{fail}x{n}"),
        _series("hello_requests_total", {**svc, "path": "/metrics", "code": "200"}, f"0+1x{n}"),
    ]
    if build_info:
        series.append(_series("hello_build_info", {**svc, "version": "0.1.0", "build_id": "test"}, f"1x{n}"))
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


# --- routing -------------------------------------------------------------------------------


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


# --- rendering -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringLayout:
    """Where the rendered files live on the host that runs Prometheus, and what they talk to.

    The defaults describe the monitoring host set up by roles/prometheus and roles/alertmanager;
    tests that run Prometheus as a local process override them.
    """

    config_dir: str = "/etc/prometheus"
    prometheus_address: str = "127.0.0.1:9090"
    alertmanager_address: str = "127.0.0.1:9093"
    node_exporter_port: int = 9100
    haproxy_metrics_port: int = 8405
    """Port of HAProxy's exporter on the LB hosts (roles/haproxy haproxy_metrics_port)."""
    service_port: int | None = None
    webhook_url: str | None = None
    token_file: str | None = None

    @property
    def rules_glob(self) -> str:
        return f"{self.config_dir}/rules/*.rules.yml"

    @property
    def effective_token_file(self) -> str:
        return self.token_file or f"{self.config_dir}/{HEAL_TOKEN_FILE}"


@dataclass(frozen=True)
class MonitoringFiles:
    """What `render_monitoring` wrote."""

    env: str
    directory: Path
    files: list[Path]
    app_targets: list[str]
    webhook_url: str
    route_cases: list[RouteCase] = field(default_factory=list)


def bridge_gateway(env: Environment) -> str | None:
    """The controller's address on a local fleet's bridge (first address of the subnet), else None."""
    if isinstance(env.terraform, TerraformLocal):
        network = ipaddress.IPv4Network(env.terraform.vars.subnet)
        return str(network.network_address + 1)
    return None


def heal_webhook_url(env: Environment) -> str:
    """Where Alertmanager posts remediable alerts.

    On a local fleet Alertmanager runs in a host on the project's bridge and reaches the heal
    server on the controller's bridge address, at the port of `healing.listen`. Elsewhere the
    heal server is expected at `healing.listen` as seen from the monitoring host.
    """
    host, _, port = env.healing.listen.rpartition(":")
    gateway = bridge_gateway(env)
    if gateway is not None:
        host = gateway
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/alerts"


def monitoring_dir(loaded: LoadedEnvironment) -> Path:
    """.orchestrate/<env>/monitoring/."""
    return loaded.paths.monitoring



def _group_wait(env: Environment) -> str:
    # Dev-short intervals (measured: group_wait 0s + group_interval 1s gives kill->webhook ~2.6 s);
    # slower environments keep Alertmanager's batching.
    evaluation = parse_duration(env.monitoring.evaluation_interval)
    return "0s" if evaluation <= 5 else format_duration(min(evaluation, 30.0))


def _group_interval(env: Environment) -> str:
    return format_duration(max(1.0, min(parse_duration(env.monitoring.evaluation_interval), 300.0)))


def render_monitoring_texts(
    loaded: LoadedEnvironment, hosts: Sequence[Host], layout: MonitoringLayout | None = None
) -> dict[str, str]:
    """The monitoring files of `loaded` as {relative path: text}; nothing is written."""
    layout = layout or MonitoringLayout()
    env = loaded.env
    port = layout.service_port or env.service.port
    app_hosts = [h for h in hosts if "app" in h.groups]
    scrape = parse_duration(env.monitoring.scrape_interval)
    prometheus = render_template(
        "monitoring/prometheus.yml.j2",
        env=env,
        scrape_timeout=format_duration(min(scrape, 10.0)),
        rules_glob=layout.rules_glob,
        alertmanager=layout.alertmanager_address,
        prometheus=layout.prometheus_address,
        service_job=SERVICE_JOB,
        node_job=NODE_JOB,
        prometheus_job=PROMETHEUS_JOB,
        app_targets=[(h.name, f"{_address(h)}:{port}") for h in app_hosts],
        node_targets=[(h.name, f"{_address(h)}:{layout.node_exporter_port}") for h in hosts],
        haproxy_job=HAPROXY_JOB,
        lb_targets=[(h.name, f"{_address(h)}:{layout.haproxy_metrics_port}") for h in hosts if "lb" in h.groups],
    )
    alertmanager = render_template(
        "monitoring/alertmanager.yml.j2",
        env=env,
        heal_receiver=HEAL_RECEIVER,
        default_receiver=DEFAULT_RECEIVER,
        remediable="|".join(r for r in REMEDIATIONS if receiver_for(r) == HEAL_RECEIVER),
        webhook_url=layout.webhook_url or heal_webhook_url(env),
        token_file=layout.effective_token_file,
        group_wait=_group_wait(env),
        group_interval=_group_interval(env),
        repeat_interval=env.healing.throttle,
        dependent_alerts="|".join(r.name for r in alert_rules(env) if r.name != "HostUnreachable"),
    )
    source = os.path.relpath(loaded.path, loaded.project_dir) if loaded.path.is_absolute() else loaded.path
    header = f"# Rendered by orchestrate from {source}; do not edit.\n"
    routes = [{"labels": c.labels, "receiver": c.receiver} for c in route_cases(env)]
    return {
        PROMETHEUS_FILE: prometheus,
        ALERTMANAGER_FILE: alertmanager,
        RULES_FILE: header + yaml.safe_dump(rules_document(env), sort_keys=False, width=200),
        RULES_TEST_FILE: header + yaml.safe_dump(rules_test_document(env), sort_keys=False, width=200),
        ROUTES_FILE: json.dumps(routes, indent=2) + "\n",
    }


def _address(host: Host) -> str:
    # Prometheus on the monitoring host reaches app hosts on their private address.
    address = host.private_address or host.address
    return f"[{address}]" if ":" in address else address


def write_monitoring(directory: Path, texts: dict[str, str]) -> list[Path]:
    """Write `texts` under `directory` (only files whose content changed); return every path."""
    written = []
    for name, text in texts.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        written.append(path)
    return written


def render_monitoring(
    loaded: LoadedEnvironment, hosts: Sequence[Host] | None = None, layout: MonitoringLayout | None = None
) -> MonitoringFiles:
    """Render the monitoring files of `loaded` into .orchestrate/<env>/monitoring/.

    `hosts` defaults to the environment's inventory (none before provisioning: the scrape jobs
    are then empty but the files are complete and valid).
    """
    layout = layout or MonitoringLayout()
    hosts = list(hosts) if hosts is not None else fleet_hosts(loaded)
    directory = monitoring_dir(loaded)
    texts = render_monitoring_texts(loaded, hosts, layout)
    files = write_monitoring(directory, texts)
    port = layout.service_port or loaded.env.service.port
    return MonitoringFiles(
        env=loaded.env.name,
        directory=directory,
        files=files,
        app_targets=[f"{_address(h)}:{port}" for h in hosts if "app" in h.groups],
        webhook_url=layout.webhook_url or heal_webhook_url(loaded.env),
        route_cases=route_cases(loaded.env),
    )


def ensure_heal_token(loaded: LoadedEnvironment) -> Path:
    """The heal webhook's bearer token file .orchestrate/<env>/heal.token (0600), created once."""
    path = loaded.state_dir / HEAL_TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return path


def read_heal_token(path: Path) -> str:
    """The token in `path`, stripped; an empty or unreadable file is an error."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise MonitoringError(f"{path}: cannot read the heal token: {exc}") from None
    if not token:
        raise MonitoringError(f"{path}: the heal token file is empty")
    return token


def playbook_extra_vars(loaded: LoadedEnvironment) -> dict[str, Any]:
    """Extra vars playbooks/monitoring.yml needs: where the rendered files and the token are."""
    return {
        "orchestrate_monitoring_dir": str(monitoring_dir(loaded)),
        "orchestrate_heal_token_file": str(loaded.state_dir / HEAL_TOKEN_FILE),
        "prometheus_retention": loaded.env.monitoring.retention,
    }


@dataclass(frozen=True)
class MonitoringDeployment:
    """What `deploy_monitoring` did: the rendered files and the playbook run."""

    files: MonitoringFiles
    run: PlaybookResult
    """The run of playbooks/monitoring.yml."""

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.files.env, "directory": str(self.files.directory),
                "app_targets": self.files.app_targets, "webhook_url": self.files.webhook_url,
                "run": self.run.as_dict()}


def deploy_monitoring(loaded: LoadedEnvironment, *, tuned: bool = True) -> MonitoringDeployment:
    """Render the monitoring files and apply playbooks/monitoring.yml to the fleet.

    The node exporter goes on every host, Prometheus and Alertmanager on the monitoring host;
    every file is validated there (promtool/amtool) before it replaces the old one. Raises
    UsageError before provisioning (no inventory) and AnsibleError naming the failed hosts.
    """
    inventory = loaded.paths.inventory
    if not inventory.is_file():
        raise UsageError(f"{loaded.name} has no inventory yet ({inventory}): run `orchestrate up {loaded.name}` first")
    ensure_heal_token(loaded)
    files = render_monitoring(loaded)
    result = run_playbook(PlaybookRun(
        playbook=loaded.project_dir / "playbooks" / "monitoring.yml", inventory=inventory,
        project_dir=loaded.project_dir, runs_dir=loaded.paths.runs,
        extra_vars=playbook_extra_vars(loaded), tuned=tuned, run_id=f"{new_run_id()}-monitoring",
        allowed_networks=allowed_networks(loaded),
    ))
    if not result.ok:
        raise AnsibleError(f"monitoring.yml failed: {result.summary_line() or result.status}")
    return MonitoringDeployment(files=files, run=result)


# --- verification --------------------------------------------------------------------------


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
        ]
    problems = check_heal_policy(loaded, playbooks_dir)
    checks.append(CheckResult(
        "heal policy", not problems, "check_heal_policy",
        "\n".join(f"{p.rule}: {p.message}" for p in problems),
    ))
    return VerificationReport(env=loaded.env.name, checks=checks)
