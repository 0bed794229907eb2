"""HAProxy on a real LB host in front of 3 real app hosts, with real load through it.

Module order matters: each test starts from the traffic split the previous one left.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from orchestrator.fleet.guard import own_network
from orchestrator.release.hosts import DeployRequest, deploy
from orchestrator.runs.audit import AuditLog
from orchestrator.runs.journal import Journal
from orchestrator.traffic.lb import LoadBalancer, configure_lb, lb_url
from orchestrator.traffic.loadgen import LoadGenerator, LoadReport, LoadSpec
from orchestrator.traffic.state import colors, read_state
from tests.support.fleet import FleetEnv
from tests.support.net import http_get

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

#: background load: bounded by count and time, ~50 requests/s
RATE = 50.0


def timed_orchestrate(fleet: FleetEnv, verb: str, *args: str) -> tuple[int, dict[str, Any], str, float]:
    """`orchestrate --project-dir P VERB ENV ... --json`: (exit code, JSON, stderr, seconds)."""
    started = time.monotonic()
    code, data, err = fleet.orchestrate(verb, *args)
    return code, data, err, time.monotonic() - started


def load(fleet: Any, seconds: float) -> LoadGenerator:
    spec = LoadSpec(url=lb_url(fleet.loaded), requests=int(RATE * seconds), duration=seconds,
                    concurrency=4, rate=RATE)
    return LoadGenerator(spec, network=own_network(fleet.loaded))


def describe(report: LoadReport) -> str:
    return json.dumps(report.as_dict())


def test_lb_balances_reloads_without_loss_and_weight_zero_drains(traffic_fleet: Any, traffic_builds: Any) -> None:
    fleet = traffic_fleet
    loaded = fleet.loaded
    run = deploy(loaded, DeployRequest(release_path=traffic_builds.v1))
    assert run.state == "deployed"
    lb_spec = fleet.group("lb")[0]
    app = [h.name for h in fleet.group("app")]
    code, shown, err = fleet.orchestrate("traffic", "--configure")
    assert code == 0, err
    assert set(shown["servers"]) == set(app)
    assert {s["weight"] for s in shown["servers"].values()} == {100}
    # a second run renders the same file: nothing changes, nothing reloads
    assert not configure_lb(loaded).changed

    # the config on the host is HAProxy's, validated, in master-worker mode with the admin socket
    cfg = fleet.ssh(lb_spec, "cat /etc/haproxy/haproxy.cfg").stdout
    assert "stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners" in cfg
    assert "master-worker" in cfg
    for name in app:
        assert f"server {name} " in cfg
    lb = LoadBalancer(loaded)
    lb.wait_up(app)

    # load through the LB while HAProxy reloads twice: no request lost, every host served
    with load(fleet, 12) as gen:
        time.sleep(2)
        for _ in range(2):
            pid_before = fleet.ssh(lb_spec, "systemctl show -p MainPID --value haproxy").stdout.strip()
            fleet.ssh(lb_spec, "systemctl reload haproxy")
            time.sleep(3)
            workers = fleet.ssh(lb_spec, "pgrep -c -x haproxy", check=False).stdout.strip()
            assert fleet.ssh(lb_spec, "systemctl show -p MainPID --value haproxy").stdout.strip() == pid_before
            assert workers  # master and worker(s) still there
    report = gen.report
    assert report.total >= 400, describe(report)
    assert report.failed == 0, describe(report)
    assert set(report.served_by) == set(app), describe(report)
    # HAProxy's own Prometheus exporter counts the same responses per server
    address = fleet.network.assert_own_address(lb_spec.address)
    status, metrics = http_get(f"http://{address}:8405/metrics", network=fleet.network)
    assert status == 200, metrics
    for name in app:
        line = next(x for x in metrics.splitlines()
                    if x.startswith(f'haproxy_server_http_responses_total{{proxy="hello",server="{name}",code="2xx"}}'))
        assert float(line.split()[-1]) > 0, line

    # weight 0 for one backend through the admin socket: it gets no more requests
    drained = app[-1]
    before = lb.set_weights({drained: 0})[drained]
    assert before["weight"] == 0
    drained_report = load(fleet, 5).run()
    after = lb.stats()[drained]
    assert drained_report.total == 250, describe(drained_report)
    assert drained_report.failed == 0, describe(drained_report)
    assert drained not in drained_report.served_by, describe(drained_report)
    assert set(drained_report.served_by) == set(app) - {drained}
    assert after["lbtot"] == before["lbtot"]
    # kept in HAProxy's server-state file, not in the config (whose weights are the initial ones):
    # a reload and a restart keep it
    cfg = fleet.ssh(lb_spec, "cat /etc/haproxy/haproxy.cfg").stdout
    assert any(line.split()[:2] == ["server", drained] and line.split()[-1] == "100" for line in cfg.splitlines()), cfg
    saved = fleet.ssh(lb_spec, "cat /var/lib/haproxy/server-state").stdout.splitlines()
    # fields: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight
    assert [line.split()[7:9] for line in saved if line.split()[3:4] == [drained]] == [["0", "100"]], saved
    for action in ("reload", "restart"):
        fleet.ssh(lb_spec, f"systemctl {action} haproxy")
        deadline = time.monotonic() + 10
        while lb.stats()[drained].get("initial_weight") != 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        running = lb.stats()
        assert running[drained]["weight"] == 0, (action, running)
        assert {n: s["weight"] for n, s in running.items() if n != drained} == dict.fromkeys(set(app) - {drained}, 100)
    lb.set_weights({drained: 100})
    assert read_state(loaded).weights[drained] == 100
    assert lb.traffic_state().weights == dict.fromkeys(app, 100)


def _colour_names(fleet: Any) -> dict[str, set[str]]:
    from orchestrator.fleet.inventory import app_hosts

    return {c: {h.name for h in hs} for c, hs in colors(app_hosts(fleet.loaded)).items()}


def _version_on(fleet: Any, name: str) -> str:
    host = fleet.host(name)
    out = fleet.ssh(host, f"curl -fsS http://{host.address}:8080/version").stdout
    return str(json.loads(out)["version"])


def test_blue_green_switch_and_switch_back_lose_no_request(traffic_fleet: Any, traffic_builds: Any) -> None:
    fleet = traffic_fleet
    groups = _colour_names(fleet)
    with load(fleet, 120) as gen:
        time.sleep(1)
        code, result, err = fleet.orchestrate("deploy", "--release", str(traffic_builds.v2),
                                              "--strategy", "blue-green")
        assert code == 0, err
        switched_at = gen.now()
        assert result["state"] == "switched" and result["active"] == "green", result
        assert result["decisions"][0]["go"] and result["decisions"][0]["requests"] > 0
        time.sleep(3)
        back_started = gen.now()
        code, back, err, _ = timed_orchestrate(fleet, "rollback")
        back_done = gen.now()
        assert code == 0, err
        time.sleep(3)
        gen.stop()
    report = gen.report
    assert report.failed == 0, describe(report)
    # after the switch only green answered, after the switch back only blue again
    during_green = {s.served_by for s in report.samples if switched_at + 0.5 <= s.started < back_started}
    after_back = {s.served_by for s in report.samples if s.started >= back_done + 0.5}
    assert during_green == groups["green"], describe(report)
    assert after_back == groups["blue"], describe(report)
    assert back["state"] == "switched_back" and back["active"] == "blue"
    # how fast the switch is: bench/ measures it (the switch-back figure), not this test
    # the green colour still runs the new release, blue the old one
    assert {_version_on(fleet, n) for n in groups["green"]} == {"0.2.0"}
    assert {_version_on(fleet, n) for n in groups["blue"]} == {"0.1.0"}


def test_canary_good_release_promoted_through_every_step(traffic_fleet: Any, traffic_builds: Any) -> None:
    fleet = traffic_fleet
    groups = _colour_names(fleet)
    with load(fleet, 150) as gen:
        code, result, err = fleet.orchestrate("deploy", "--release", str(traffic_builds.v3),
                                              "--strategy", "canary-traffic")
        done = gen.now()
        time.sleep(2)
        gen.stop()
    assert code == 0, err
    report = gen.report
    assert report.failed == 0, describe(report)
    assert result["state"] == "promoted" and result["active"] == "green"
    assert [d["step"] for d in result["decisions"]] == [10, 25, 50, 75, 100]
    assert all(d["go"] and d["requests"] > 0 and d["failed"] == 0 for d in result["decisions"]), result
    # the shares grew: the canary's measured requests per step rise with its weight
    counts = [d["requests"] for d in result["decisions"]]
    assert counts[0] < counts[-1], counts
    assert {s.served_by for s in report.samples if s.started > done + 0.5} == groups["green"]
    assert {_version_on(fleet, n) for n in groups["green"]} == {"0.3.0"}
    # every decision is in the audit log with its measured values
    with AuditLog(fleet.state_dir, env=fleet.env_name) as audit:
        gates = [e for e in audit.entries() if e.command == "canary-traffic gate"]
    assert len(gates) == 5 and all(e.outcome == "go" for e in gates)
    assert {e.details["step"] for e in gates} == {10, 25, 50, 75, 100}


def test_canary_flaky_release_rolled_back_at_first_step(traffic_fleet: Any, traffic_builds: Any) -> None:
    fleet = traffic_fleet
    groups = _colour_names(fleet)  # green serves v3 now; blue is idle and gets the flaky release
    with load(fleet, 150) as gen:
        code, result, err = fleet.orchestrate("deploy", "--release", str(traffic_builds.flaky),
                                              "--strategy", "canary-traffic")
        done = gen.now()
        time.sleep(2)
        gen.stop()
    assert code == 3, err
    report = gen.report
    decisions = result["decisions"]
    assert len(decisions) == 1 and decisions[0]["step"] == 10 and not decisions[0]["go"], result
    assert decisions[0]["error_ratio"] > 0.05
    assert result["state"] == "rolled_back" and result["active"] == "green"
    # failures: only the flaky release's 500s, from the canary hosts, during the first step only
    canary_served = [s for s in report.samples if s.served_by in groups["blue"]]
    failed = [s for s in report.samples if s.failed]
    assert failed, describe(report)
    assert all(s.status == 500 and s.served_by in groups["blue"] for s in failed), describe(report)
    # the bound: at most ~30% of what the canary got (10% of the load for one hold of 3 s)
    assert len(canary_served) <= 0.10 * RATE * (3 + 3) + 10, describe(report)
    assert len(failed) <= 0.30 * len(canary_served) + 3, describe(report)
    assert len(failed) <= 15
    assert {s.served_by for s in report.samples if s.started > done + 0.5} == groups["green"]
    # the idle colour is back on the release it had, the serving colour untouched
    assert set(result["restored_hosts"]) == groups["blue"]
    assert {_version_on(fleet, n) for n in groups["blue"]} == {"0.1.0"}
    assert {_version_on(fleet, n) for n in groups["green"]} == {"0.3.0"}
    # the decision and its values are in the journal and the audit log
    with AuditLog(fleet.state_dir, env=fleet.env_name) as audit:
        last = next(e for e in audit.entries() if e.command == "canary-traffic gate")
    assert last.outcome == "rollback" and last.details["failed"] == decisions[0]["failed"]
    journal = Journal.open(fleet.state_dir, env=fleet.env_name)
    try:
        run = journal.runs(with_steps=True)[0]
        step = run.steps[0]
    finally:
        journal.close()
    assert run.state == "failed" and step.detail["decisions"][0]["go"] is False


def test_without_the_cache_a_blue_green_goes_to_the_colour_haproxy_drains(traffic_fleet: Any,
                                                                           traffic_builds: Any) -> None:
    """HAProxy's runtime state is the truth, `.orchestrate/ENV/traffic.json` only a cache: a checkout
    that lost it (or never had it) still deploys to the idle colour, never the serving one."""
    fleet = traffic_fleet
    groups = _colour_names(fleet)  # green serves v3 (the canary above), blue is idle on v1
    code, first, err = fleet.orchestrate("deploy", "--release", str(traffic_builds.v2), "--strategy", "blue-green")
    assert code == 0, err
    assert (first["active"], first["previous"]) == ("blue", "green")
    cache = fleet.state_dir / "traffic.json"
    cache.unlink()
    lb = LoadBalancer(fleet.loaded)
    assert {n for n, s in lb.stats().items() if s["weight"] == 0} == groups["green"]  # what HAProxy says

    with load(fleet, 120) as gen:
        time.sleep(1)
        code, second, err = fleet.orchestrate("deploy", "--release", str(traffic_builds.v1),
                                              "--strategy", "blue-green")
        switched_at = gen.now()
        time.sleep(2)
        gen.stop()
    assert code == 0, err
    report = gen.report
    assert report.failed == 0, describe(report)
    # the release went to green, the colour HAProxy gave weight 0; blue served until the switch
    assert (second["active"], second["previous"]) == ("green", "blue"), second
    assert {h["name"] for h in second["deploy"]["hosts"]} == groups["green"], second["deploy"]
    assert {s.served_by for s in report.samples if s.started < switched_at - 2} == groups["blue"], describe(report)
    assert {s.served_by for s in report.samples if s.started > switched_at + 0.5} == groups["green"]
    assert {_version_on(fleet, n) for n in groups["blue"]} == {"0.2.0"}
    assert {_version_on(fleet, n) for n in groups["green"]} == {"0.1.0"}
    # the cache is written again from HAProxy's state
    assert read_state(fleet.loaded).active == "green"
