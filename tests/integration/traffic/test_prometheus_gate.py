"""The canary gate on Prometheus: a fleet with a monitoring host, whose Prometheus scrapes the
service's own counters (service.metrics of the example) and HAProxy's exporter on the LB host,
under real load through the LB.

Module order matters: the flaky release starts from the split the good one left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.monitoring.files import deploy_monitoring
from orchestrator.release.hosts import DeployRequest, deploy
from orchestrator.runs.audit import AuditLog
from orchestrator.runs.journal import Journal
from orchestrator.traffic.gates import Prometheus, monitoring_host
from orchestrator.traffic.lb import configure_lb
from tests.support.fleet import TRAFFIC_OVERRIDES

from .test_lb import _colour_names, _version_on, describe, load, timed_orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

#: every default step (10, 25, 50, 75, 100), each held 2 s: enough requests per step at ~50 requests/s
DEFAULT_STEPS = [10, 25, 50, 75, 100]
GATED_OVERRIDES: dict[str, Any] = {
    **TRAFFIC_OVERRIDES,
    "rollout": {**TRAFFIC_OVERRIDES["rollout"], "traffic_steps": DEFAULT_STEPS, "step_hold": "2s"},
    "monitoring": {"enabled": True, "scrape_interval": "1s", "evaluation_interval": "1s"},
}


@pytest.fixture(scope="module")
def gated_fleet(session_fleet_factory: Any, traffic_builds: Any) -> Iterator[Any]:
    fleet = session_fleet_factory(app_count=2, lb_count=1, monitoring_count=1, overrides=GATED_OVERRIDES)
    assert deploy(fleet.loaded, DeployRequest(release_path=traffic_builds.v1)).state == "deployed"
    configure_lb(fleet.loaded)
    deploy_monitoring(fleet.loaded)
    mon = monitoring_host(fleet.loaded)
    assert mon is not None
    prometheus = Prometheus(fleet.loaded, mon)
    deadline = time.monotonic() + 60
    while prometheus.query('sum(up{job="haproxy"})') != 1.0:
        assert time.monotonic() < deadline, "Prometheus does not scrape HAProxy's exporter on the LB host"
        time.sleep(0.5)
    yield fleet


def _gates(fleet: Any) -> list[Any]:
    with AuditLog(fleet.state_dir, env=fleet.env_name) as audit:
        return [e for e in audit.entries() if e.command == "canary-traffic gate"]


def _journal_decisions(fleet: Any) -> list[dict[str, Any]]:
    """The gate decisions of the newest run's deploy step, as the journal keeps them."""
    journal = Journal.open(fleet.state_dir, env=fleet.env_name)
    try:
        step = journal.runs(with_steps=True)[0].steps[0]
    finally:
        journal.close()
    return list(step.detail["decisions"])


def test_good_release_promoted_through_every_default_step_on_prometheus(gated_fleet: Any,
                                                                        traffic_builds: Any) -> None:
    fleet = gated_fleet
    groups = _colour_names(fleet)
    assert fleet.loaded.env.rollout.traffic_steps == DEFAULT_STEPS
    # `canary` is the canary by traffic weight: this environment has a load-balancer host
    with load(fleet, 120) as gen:
        code, result, err, seconds = timed_orchestrate(fleet, "deploy", "--release", str(traffic_builds.v3),
                                                       "--strategy", "canary")
        done = gen.now()
        time.sleep(2)
        gen.stop()
    assert code == 0, err
    report = gen.report
    assert report.failed == 0, describe(report)
    assert result["state"] == "promoted" and result["active"] == "green", result
    assert result["strategy"] == "canary-traffic" and result["requested_strategy"] == "canary", result
    decisions = result["decisions"]
    assert [d["step"] for d in decisions] == DEFAULT_STEPS
    for d in decisions:
        assert d["source"] == "prometheus" and d["go"], d
        assert d["requests"] > 0 and d["failed"] == 0 and d["error_ratio"] == 0, d
        assert set(d["queries"]) == {"requests", "failed", "error_ratio", "latency_seconds"}, d
        # the example names its own counter (service.metrics): the error ratio is the service's, the
        # latency HAProxy's
        assert 'hello_requests_total{job="service",code=~"5.."' in d["queries"]["error_ratio"], d
        assert 'job="haproxy"' in d["queries"]["latency_seconds"], d
        assert d["values"]["requests"] > 0 and d["values"]["latency_seconds"] is not None, d
        # HAProxy keeps response times in whole milliseconds: 0 on this bridge is a real value
        assert 0 <= d["latency_ms"] < 500, d
    # the canary's share grew: Prometheus saw more of its requests per second at 100% than at 10%
    assert decisions[0]["requests"] < decisions[-1]["requests"], decisions
    assert {s.served_by for s in report.samples if s.started > done + 0.5} == groups["green"]
    assert {_version_on(fleet, n) for n in groups["green"]} == {"0.3.0"}
    # each decision, with its PromQL and the values Prometheus answered, in the audit log and the journal
    gates = list(reversed(_gates(fleet)))  # oldest first
    assert [e.details["step"] for e in gates] == DEFAULT_STEPS
    assert all(e.outcome == "go" and e.details["source"] == "prometheus" for e in gates)
    assert [(e.details["queries"], e.details["values"]) for e in gates] == [
        (d["queries"], d["values"]) for d in decisions]
    journalled = _journal_decisions(fleet)
    assert [(d["step"], d["source"], d["queries"], d["values"]) for d in journalled] == [
        (d["step"], d["source"], d["queries"], d["values"]) for d in decisions]
    print(f"canary through {len(DEFAULT_STEPS)} Prometheus gates: {seconds:.1f} s")


def test_flaky_release_rolled_back_at_first_step_by_prometheus(gated_fleet: Any, traffic_builds: Any) -> None:
    fleet = gated_fleet
    groups = _colour_names(fleet)  # green serves v3 now; blue is idle and gets the flaky release
    with load(fleet, 90) as gen:
        code, result, err, seconds = timed_orchestrate(fleet, "deploy", "--release", str(traffic_builds.flaky),
                                                       "--strategy", "canary-traffic")
        done = gen.now()
        time.sleep(2)
        gen.stop()
    assert code == 3, err
    report = gen.report
    decisions = result["decisions"]
    assert len(decisions) == 1 and decisions[0]["step"] == 10 and not decisions[0]["go"], result
    decision = decisions[0]
    assert decision["source"] == "prometheus", decision
    assert decision["error_ratio"] > 0.05 and decision["values"]["error_ratio"] > 0.05, decision
    assert decision["failed"] > 0 and "error ratio" in decision["reason"], decision
    assert result["state"] == "rolled_back" and result["active"] == "green"
    # only the canary's 500s failed, and no request failed once the traffic was back on green
    failed = [s for s in report.samples if s.failed]
    assert failed and all(s.status == 500 and s.served_by in groups["blue"] for s in failed), describe(report)
    assert {s.served_by for s in report.samples if s.started > done + 0.5} == groups["green"]
    assert {_version_on(fleet, n) for n in groups["blue"]} == {"0.1.0"}
    last = _gates(fleet)[0]  # newest first
    assert last.outcome == "rollback" and last.details["source"] == "prometheus"
    assert last.details["queries"]["error_ratio"] == decision["queries"]["error_ratio"]
    recorded = _journal_decisions(fleet)[0]
    assert recorded["source"] == "prometheus" and recorded["values"] == decision["values"], recorded
    print(f"flaky canary rolled back by Prometheus: {seconds:.1f} s")


def test_blue_green_gates_the_idle_colour_on_prometheus(gated_fleet: Any, traffic_builds: Any) -> None:
    fleet = gated_fleet
    groups = _colour_names(fleet)  # green serves v3; blue is idle, back on v1 after the flaky canary
    with load(fleet, 90) as gen:
        code, result, err, seconds = timed_orchestrate(fleet, "deploy", "--release", str(traffic_builds.v2),
                                                       "--strategy", "blue-green")
        done = gen.now()
        time.sleep(2)
        gen.stop()
    assert code == 0, err
    assert gen.report.failed == 0, describe(gen.report)
    assert result["state"] == "switched" and result["active"] == "blue", result
    decision = result["decisions"][0]
    assert decision["source"] == "prometheus" and decision["go"], decision
    # Prometheus counted at least the smoke requests on the idle hosts, none failed
    assert decision["values"]["requests"] >= decision["values"]["smoke_requests"] > 0, decision
    assert decision["values"]["error_ratio"] == 0 and decision["failed"] == 0, decision
    assert 'job="service"' in decision["queries"]["error_ratio"], decision
    assert {s.served_by for s in gen.report.samples if s.started > done + 0.5} == groups["blue"]
    assert {_version_on(fleet, n) for n in groups["blue"]} == {"0.2.0"}
    with AuditLog(fleet.state_dir, env=fleet.env_name) as audit:
        gate = next(e for e in audit.entries() if e.command == "blue-green gate")
    assert gate.outcome == "go" and gate.details["source"] == "prometheus" and gate.details["queries"]
    print(f"blue-green on a Prometheus gate: {seconds:.1f} s")
