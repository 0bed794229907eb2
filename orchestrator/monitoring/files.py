"""Prometheus and Alertmanager configuration, alert rules and their tests, and their verification.

Everything is rendered from the environment file (`monitoring:`, `healing:`, `service.port`) and the
fleet's inventory into `.orchestrate/<env>/monitoring/`:

    prometheus.yml                      scrape jobs health (the blackbox exporter probing every app host's
                                        health path), service (every app host's /metrics, with
                                        service.metrics), node (every host), haproxy (every lb host), prometheus
    blackbox.yml                        the blackbox exporter's module that probes a health path
    rules/orchestrate.rules.yml         ServiceDown, HealthFailing, HighErrorRate, HostUnreachable
    rules/orchestrate.rules.test.yml    a promtool unit test per rule, firing and not firing
    dashboard.json                      a Grafana dashboard of the same metrics (monitoring/dashboard.py)
    rules/operator-NAME.rules.yml       the operator's rules (monitoring.rule_files), as they are
    alertmanager.yml                    remediable alerts -> the heal webhook (bearer token), others -> default
    routes.json                         the routing cases `amtool config routes test` must confirm

Each alert ships as a bundle: the rule, its promtool test, its routing case and the remediation
playbook its `remediation` label names (playbooks/remediate-<name>.yml); `check_heal_policy`
verifies that last link statically. Verification runs the real promtool and amtool.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import Environment, TerraformLocal
from orchestrator.config.types import parse_duration
from orchestrator.errors import AnsibleError, OrchestratorError, UsageError
from orchestrator.fleet.inventory import Host, fleet_hosts
from orchestrator.fleet.playbooks import run_env_playbook
from orchestrator.fleet.render import render_template
from orchestrator.monitoring.dashboard import DashboardEvent, build_dashboard, journal_events
from orchestrator.monitoring.delivery import publish_after_run
from orchestrator.monitoring.log_rules import add_log_rule_tests, add_log_rules, log_route_cases
from orchestrator.monitoring.logs import playbook_vars as logs_playbook_vars
from orchestrator.monitoring.operator import DEPLOYED_PREFIX, RULES_SUFFIX, find_rule_files, rule_texts
from orchestrator.monitoring.rules import (
    DEFAULT_RECEIVER,
    HAPROXY_JOB,
    HEAL_RECEIVER,
    HEALTH_JOB,
    HEALTH_MODULE,
    NODE_JOB,
    PROMETHEUS_JOB,
    REMEDIATIONS,
    RULES_FILE,
    RULES_TEST_FILE,
    SERVICE_JOB,
    RouteCase,
    alert_rules,
    format_duration,
    receiver_for,
    route_cases,
    rules_document,
    rules_test_document,
)
from orchestrator.tools.ansible import PlaybookResult

MONITORING_DIR = "monitoring"


PROMETHEUS_FILE = "prometheus.yml"


ALERTMANAGER_FILE = "alertmanager.yml"


BLACKBOX_FILE = "blackbox.yml"


ROUTES_FILE = "routes.json"


DASHBOARD_FILE = "dashboard.json"


HEAL_TOKEN_FILE = "heal.token"  # noqa: S105 - a file name, not a secret


class MonitoringError(OrchestratorError):
    """Monitoring configuration could not be rendered or failed its checks."""


@dataclass(frozen=True)
class MonitoringLayout:
    """Where the rendered files live on the host that runs Prometheus, and what they talk to.

    The defaults describe the monitoring host set up by roles/prometheus and roles/alertmanager;
    tests that run Prometheus as a local process override them.
    """

    config_dir: str = "/etc/prometheus"
    prometheus_address: str = "127.0.0.1:9090"
    alertmanager_address: str = "127.0.0.1:9093"
    blackbox_address: str = "127.0.0.1:9115"
    """The blackbox exporter that probes the health paths (on the monitoring host, beside Prometheus)."""
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
        if not env.terraform.vars.subnet:
            raise UsageError(f"{env.name}: the local fleet has no subnet yet: run `orchestrate render {env.name}` "
                             "(or provision it), or set terraform.vars.subnet")
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


#: the shortest group_interval rendered: Alertmanager then looks at a group twice a second
MIN_GROUP_INTERVAL = 0.5


def _group_wait(env: Environment) -> str:
    # Short evaluation intervals (dev, staging): a new group is sent at once, the alert having
    # already waited its `for` in Prometheus; slower environments keep Alertmanager's batching.
    evaluation = parse_duration(env.monitoring.evaluation_interval)
    return "0s" if evaluation <= 5 else format_duration(min(evaluation, 30.0))


def _group_interval(env: Environment) -> str:
    # A new alert in a group that has sent before (the same alert on the same host, back within
    # minutes) waits for the group's next tick: one evaluation interval, 500ms to 5m.
    evaluation = parse_duration(env.monitoring.evaluation_interval)
    return format_duration(max(MIN_GROUP_INTERVAL, min(evaluation, 300.0)))


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
        metrics=env.service.metrics,
        health_job=HEALTH_JOB,
        health_module=HEALTH_MODULE,
        health_path=env.service.health.path,
        blackbox=layout.blackbox_address,
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
        notify_urls=alertmanager_webhooks(env),
    )
    source = os.path.relpath(loaded.path, loaded.project_dir) if loaded.path.is_absolute() else loaded.path
    header = f"# Rendered by orchestrate from {source}; do not edit.\n"
    routes = [{"labels": c.labels, "receiver": c.receiver} for c in [*route_cases(env), *log_route_cases(env)]]
    rules = add_log_rules(rules_document(env), env)
    rule_tests = add_log_rule_tests(rules_test_document(env), env)
    operator = {f"{Path(RULES_FILE).parent}/{name}": text for name, text in rule_texts(find_rule_files(loaded)).items()}
    return {
        PROMETHEUS_FILE: prometheus,
        ALERTMANAGER_FILE: alertmanager,
        BLACKBOX_FILE: blackbox_config(env),
        RULES_FILE: header + yaml.safe_dump(rules, sort_keys=False, width=200),
        RULES_TEST_FILE: header + yaml.safe_dump(rule_tests, sort_keys=False, width=200),
        ROUTES_FILE: json.dumps(routes, indent=2) + "\n",
        DASHBOARD_FILE: dashboard_text(loaded, hosts),
        **operator,
    }


def dashboard_text(loaded: LoadedEnvironment, hosts: Sequence[Host], events: Sequence[DashboardEvent] = ()) -> str:
    """The Grafana dashboard as the file placed next to Prometheus (orchestrator.monitoring.dashboard)."""
    return json.dumps(build_dashboard(loaded, hosts, events), indent=2) + "\n"


def alertmanager_webhooks(env: Environment) -> list[str]:
    """The notify webhooks Alertmanager posts its own alerts to: those taking heal or escalation
    events, given as plain URLs (Alertmanager 0.25 has no url_file: a URL from the vault file
    would sit in clear in its configuration, so it is left out)."""
    found = []
    for webhook in env.notify.webhooks:
        if isinstance(webhook.url, str) and (webhook.wants("heal") or webhook.wants("escalation")):
            found.append(webhook.url)
    return list(dict.fromkeys(found))



def blackbox_config(env: Environment) -> str:
    """The blackbox exporter's configuration: one module that GETs a health path and wants a 200,
    as the deploy gate does (no redirect followed, IPv4 first)."""
    module = {"prober": "http", "timeout": format_duration(min(parse_duration(env.monitoring.scrape_interval), 10.0)),
              "http": {"method": "GET", "valid_status_codes": [200], "follow_redirects": False,
                       "preferred_ip_protocol": "ip4"}}
    header = f"# Rendered by orchestrate for environment {env.name}; do not edit.\n"
    return header + yaml.safe_dump({"modules": {HEALTH_MODULE: module}}, sort_keys=False)


def _address(host: Host) -> str:
    # Prometheus on the monitoring host reaches app hosts on their private address.
    address = host.private_address or host.address
    return f"[{address}]" if ":" in address else address


def write_monitoring(directory: Path, texts: dict[str, str]) -> list[Path]:
    """Write `texts` under `directory` (only files whose content changed); return every path.

    Operator rules files that are no longer configured are removed (the role removes them from
    the monitoring host too).
    """
    rules_dir = directory / Path(RULES_FILE).parent
    if rules_dir.is_dir():
        keep = {directory / name for name in texts}
        for stale in rules_dir.glob(f"{DEPLOYED_PREFIX}*{RULES_SUFFIX}"):
            if stale not in keep:
                stale.unlink()
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
    # the copy placed next to Prometheus carries the journal's deploys and canary steps so far
    texts[DASHBOARD_FILE] = dashboard_text(loaded, hosts, journal_events(loaded))
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
    # central logs (playbooks/logs.yml, imported by monitoring.yml): the certificates are made first
    extra = {**playbook_extra_vars(loaded), **logs_playbook_vars(loaded)}
    result = run_env_playbook(loaded, "monitoring.yml", extra, tuned=tuned)
    if not result.ok:
        raise AnsibleError(f"monitoring.yml failed: {result.summary_line() or result.status}")
    # a new monitoring host gets the delivery metrics now, not only after the next release
    publish_after_run(loaded)
    return MonitoringDeployment(files=files, run=result)
