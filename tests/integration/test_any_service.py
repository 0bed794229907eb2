"""A service that is not the example: examples/ledger-service deployed, monitored and healed on real
hosts with its own contract (binary `ledgerd`, `--listen/--state/--migrations`, readiness on
/ready, metrics `ledger_http_responses_total{class}`, a migration as its before_switch hook), as a
release bundle.

One fleet for the module (2 app hosts, a monitoring host, a load balancer), the tests in file
order: every strategy deploys and stays quiet for 60 s (no alert fires, the heal server does
nothing), the operator's rules file is loaded by Prometheus, a broken build and a failing
migration exit 3 with the previous release serving, and the same service without metrics deploys
by canary on the load balancer's figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.runs.audit import AuditLog
from tests.support.builds import LedgerBundles, build_ledger
from tests.support.cli import orchestrate, spawn_orchestrate
from tests.support.fleet import TRAFFIC_OVERRIDES, FleetEnv, deep_merge, fleets
from tests.support.net import free_port, http_get, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.hosts]

PORT = 9300
#: how long the fleet must stay quiet after each deploy
QUIET_SECONDS = 60

LEDGER_SERVICE: dict[str, Any] = {
    "name": "ledger",
    "binary": "ledgerd",
    "args": ["--listen", "0.0.0.0:{port}", "--state", "{data_dir}", "--migrations", "{release_dir}/migrations"],
    "port": PORT,
    "health": {"path": "/ready", "timeout": "10s", "interval": "250ms"},
    "metrics": {"path": "/metrics", "requests": "ledger_http_responses_total", "errors": 'class="5xx"'},
    "hooks": {"before_switch": ["{release_dir}/ledgerd", "migrate", "--state", "{data_dir}",
                                "--migrations", "{release_dir}/migrations"]},
    "data_dir": "/var/lib/ledger",
    "config": {"LEDGER_NAME": "ledger under test"},
}

#: the operator's own rules: an alert that holds only when the service stops exporting its build
OPERATOR_RULES = {"groups": [{"name": "ledger-operator", "rules": [{
    "alert": "LedgerBuildInfoMissing", "expr": 'absent(ledger_build_info{job="service"})', "for": "5m",
    "labels": {"severity": "warning", "remediation": "none"},
    "annotations": {"summary": "ledger exports no build info"}}]}]}
OPERATOR_TEST = {"rule_files": ["ledger.rules.yml"], "evaluation_interval": "1m", "tests": [
    {"interval": "1m", "input_series": [{"series": 'ledger_build_info{job="service",version="0.1.0"}',
                                         "values": "1x10"}],
     "alert_rule_test": [{"eval_time": "8m", "alertname": "LedgerBuildInfoMissing", "exp_alerts": []}]},
    {"interval": "1m", "input_series": [{"series": 'other{job="service"}', "values": "1x10"}],
     "alert_rule_test": [{"eval_time": "8m", "alertname": "LedgerBuildInfoMissing", "exp_alerts": [
         {"exp_labels": {"job": "service", "severity": "warning", "remediation": "none"},
          "exp_annotations": {"summary": "ledger exports no build info"}}]}]}]}


@pytest.fixture(scope="module")
def ledger_bundles(tmp_path_factory: pytest.TempPathFactory) -> LedgerBundles:
    return build_ledger(tmp_path_factory.mktemp("ledger-bundles"))


def run(fleet: FleetEnv, verb: str, *args: str, timeout: float = 900) -> dict[str, Any]:
    code, data, err = fleet.orchestrate(verb, *args, timeout=timeout)
    assert code == 0, f"{verb} {' '.join(args)} exited {code}:\n{err[-4000:]}"
    return data


def prometheus(fleet: FleetEnv, path: str, **params: str) -> Any:
    monitor = fleet.group("monitoring")[0]
    url = f"http://{monitor.address}:9090{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    status, body = http_get(url, network=fleet.network, timeout=5)
    assert status == 200, body
    return json.loads(body)["data"]


def firing(fleet: FleetEnv, query: str = 'ALERTS{alertstate="firing"}') -> list[dict[str, str]]:
    """The label sets `query` answers (by default: the alerts firing now)."""
    return [r["metric"] for r in prometheus(fleet, "/api/v1/query", query=query)["result"]]


def acted(fleet: FleetEnv) -> list[tuple[str, str]]:
    """(alertname, host) of every remediation the heal server started."""
    with AuditLog(fleet.state_dir, env=fleet.env_name) as log:
        return [(str(e.details.get("alertname")), str(e.details.get("host")))
                for e in log.entries(command="heal", limit=None) if e.outcome == "acted"]


def releases(fleet: FleetEnv) -> dict[str, str | None]:
    data = run(fleet, "status")
    assert all(h["healthy"] for h in data["hosts"]), data
    return {h["name"]: h["release"] for h in data["hosts"]}


@contextlib.contextmanager
def heal_server(fleet: FleetEnv, port: int) -> Iterator[None]:
    serve = spawn_orchestrate(fleet.project_dir, "heal", "serve", fleet.env_name, "--json", start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
        serve.communicate(timeout=60)


@pytest.fixture(scope="module")
def ledger_fleet(ledger_bundles: LedgerBundles) -> Iterator[FleetEnv]:
    """The fleet with release `a` on every host (rolling), the load balancer configured, monitoring
    deployed with the operator's rules file, and the heal server running."""
    heal_port = free_port()
    overrides = deep_merge(json.loads(json.dumps(TRAFFIC_OVERRIDES)), {
        "service": LEDGER_SERVICE, "rollout": {"canary_load": 20},
        "monitoring": {"rule_files": ["rules/*.rules.yml"]},
        "healing": {"listen": f"127.0.0.1:{heal_port}"}})
    with fleets("anysvc") as factory:
        fleet = factory.boot(app_count=2, monitoring_count=1, lb_count=1, overrides=overrides)
        rules = fleet.project_dir / "inventories" / fleet.env_name / "rules"
        rules.mkdir()
        (rules / "ledger.rules.yml").write_text(yaml.safe_dump(OPERATOR_RULES, sort_keys=False))
        (rules / "ledger.rules.test.yml").write_text(yaml.safe_dump(OPERATOR_TEST, sort_keys=False))
        run(fleet, "deploy", "--release", str(ledger_bundles.a), "--strategy", "rolling")
        run(fleet, "traffic", "--configure")
        code, _, err = orchestrate(fleet.project_dir, "monitoring", "deploy", fleet.env_name, timeout=900)
        assert code == 0, err[-4000:]
        with heal_server(fleet, heal_port):
            yield fleet


def wait_probes_up(fleet: FleetEnv) -> None:
    """Until Prometheus has a successful health probe and a service scrape of every app host."""
    apps = {h.name for h in fleet.group("app")}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probes = {m["host"] for m in firing(fleet, 'probe_success{job="health"} == 1')}
        scraped = {m["host"] for m in firing(fleet, 'up{job="service"} == 1')}
        if probes == apps and scraped == apps:
            return
        time.sleep(1)
    raise AssertionError(f"health probes of {apps} not all passing: {probes}, scraped {scraped}")


def test_ledger_deploys_with_every_strategy_and_stays_quiet(ledger_fleet: FleetEnv,
                                                            ledger_bundles: LedgerBundles) -> None:
    fleet = ledger_fleet
    lb = fleet.group("lb")[0]
    wait_probes_up(fleet)
    # one quiet window covers the three deploys and the QUIET_SECONDS after the last one: every
    # deploy is followed by at least QUIET_SECONDS without an alert or a remediation
    started = time.monotonic()
    before = acted(fleet)
    for strategy, bundle in (("rolling", ledger_bundles.b), ("canary", ledger_bundles.c),
                             ("blue-green", ledger_bundles.a)):
        result = run(fleet, "deploy", "--release", str(bundle), "--strategy", strategy)
        assert result["state"] in ("deployed", "promoted", "switched"), result
        release = result["release"]
        assert release.startswith("0.1.0-"), result  # the bundle's VERSION file
        serving = releases(fleet)
        assert release in serving.values(), serving
        status, body = http_get(f"http://{lb.address}/ready", network=fleet.network)
        assert (status, body.strip()) == (200, "ready"), body
        # the migration hook ran with the release's own binary and migrations
        app = fleet.group("app")[0]
        assert fleet.ssh(app, "cat /var/lib/ledger/schema_version").stdout.strip() == "2"
        assert firing(fleet) == [], f"an alert fired after the {strategy} deploy of {release}"
    deadline = time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        assert firing(fleet) == [], "an alert fired after the deploys"
        time.sleep(5)
    window = math.ceil(time.monotonic() - started) + 5
    assert firing(fleet, f'max_over_time(ALERTS{{alertstate="firing"}}[{window}s])') == []
    assert acted(fleet) == before, "the heal server acted after a deploy"
    wait_probes_up(fleet)  # the probes still pass: the quiet is not blindness
    assert acted(fleet) == []


def test_the_operators_rules_file_is_loaded_by_prometheus(ledger_fleet: FleetEnv) -> None:
    groups = {g["name"]: g for g in prometheus(ledger_fleet, "/api/v1/rules")["groups"]}
    assert "ledger-operator" in groups, sorted(groups)
    assert groups["ledger-operator"]["file"].endswith("/rules/operator-ledger.rules.yml")
    assert {r["name"] for r in groups["ledger-operator"]["rules"]} == {"LedgerBuildInfoMissing"}
    assert {"ServiceDown", "HealthFailing", "HighErrorRate", "HostUnreachable"} <= {
        r["name"] for g in groups.values() for r in g["rules"]}


@pytest.mark.parametrize("which", ["broken", "failmigrate"])
def test_a_failing_release_exits_3_with_the_previous_release_serving(ledger_fleet: FleetEnv,
                                                                      ledger_bundles: LedgerBundles,
                                                                      which: str) -> None:
    fleet = ledger_fleet
    before = releases(fleet)
    code, _result, err = fleet.orchestrate("deploy", "--release", str(getattr(ledger_bundles, which)),
                                          "--strategy", "rolling", timeout=900)
    assert code == 3, f"exit {code}:\n{err[-3000:]}"
    assert releases(fleet) == before
    for host in fleet.group("app"):
        assert fleet.http_get(host.address, "/ready", port=PORT)[0] == 200
    if which == "failmigrate":
        # the hook's own output is the evidence of the failed switch
        evidence = Path(re.search(r"evidence: (\S+)", err).group(1))  # type: ignore[union-attr]
        hooks = [p.read_text() for p in evidence.glob("*/hook.txt")]
        assert hooks and all("before_switch" in h and "migration failed on purpose" in h for h in hooks), hooks


def test_a_service_without_metrics_deploys_by_canary_on_the_load_balancers_figures(
        ledger_fleet: FleetEnv, ledger_bundles: LedgerBundles) -> None:
    fleet = ledger_fleet
    env_file = fleet.project_dir / "inventories" / fleet.env_name / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["service"]["metrics"] = False
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    serving = set(releases(fleet).values())
    bundle = next(b for b in (ledger_bundles.a, ledger_bundles.b, ledger_bundles.c)
                  if not any(r and r.endswith(_sha12(b)) for r in serving))
    result = run(fleet, "deploy", "--release", str(bundle), "--strategy", "canary")
    assert result["strategy"] == "canary-traffic" and result["state"] == "promoted", result
    decisions = result["decisions"]
    assert decisions and all(d["go"] and d["source"] == "prometheus" for d in decisions), decisions
    for decision in decisions:
        assert "haproxy_server_http_responses_total" in decision["queries"]["error_ratio"]
        assert "ledger_" not in " ".join(decision["queries"].values())


def _sha12(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_rollback_switches_back_to_the_release_that_served(ledger_fleet: FleetEnv) -> None:
    fleet = ledger_fleet
    lb = fleet.group("lb")[0]
    data = run(fleet, "rollback")
    # after the canary by weight above, the colour that served before takes the traffic back
    assert data["strategy"] == "switch-back" and data["state"] == "switched_back", data
    releases(fleet)  # every host healthy
    status, body = http_get(f"http://{lb.address}/ready", network=fleet.network)
    assert (status, body.strip()) == (200, "ready")


def test_a_killed_ledger_is_restarted_by_the_heal_server(ledger_fleet: FleetEnv) -> None:
    fleet = ledger_fleet
    victim = fleet.group("app")[0]
    # systemd must not bring it back itself: Restart=no until the next daemon-reload from /etc
    fleet.ssh(victim, "mkdir -p /run/systemd/system/ledger.service.d && "
                      "printf '[Service]\\nRestart=no\\n' > /run/systemd/system/ledger.service.d/no-restart.conf && "
                      "systemctl daemon-reload && systemctl kill -s KILL ledger.service")
    down_seen, deadline = False, time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            status = fleet.http_get(victim.address, "/ready", port=PORT)[0]
        except OSError:
            status = 0
        if status != 200:
            down_seen = True
        elif down_seen:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"ledger on {victim.name} did not come back within 90 s: {acted(fleet)}")
    assert down_seen
    assert ("ServiceDown", victim.name) in acted(fleet)  # the probe saw nothing answer; the heal server acted
    assert fleet.ssh(victim, "systemctl show -p Restart --value ledger.service").stdout.strip() == "no"
