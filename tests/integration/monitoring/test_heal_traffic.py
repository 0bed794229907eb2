"""The heal loop after a blue-green release, on real local hosts.

A release that the blue-green gate lets through (the gate here tolerates errors, the alert does
not) takes all traffic; under load through the load balancer it answers 30% of its requests with
500, HighErrorRate fires, and the heal server's rollback remediation goes through the release
service: the traffic switches back to the colour that served before (the hosts keep their
releases), and the remediation is a run of its own in `orchestrate runs`.
"""

from __future__ import annotations

import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import orchestrate as orchestrate_cli
from tests.support.net import free_port, http_get

from .test_heal_e2e import current_release, example_binary, flaky_binary, heal_server, prometheus_up


def orchestrate(fleet: FleetEnv, *args: str) -> tuple[int, dict[str, Any], str]:
    """`orchestrate --project-dir P ARGS... --json` of the fleet's project copy."""
    return orchestrate_cli(fleet.project_dir, *args)

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]

FleetEnv = Any


def serving(fleet: FleetEnv) -> dict[str, int]:
    """Each app host's weight on the load balancer, as HAProxy reports it now."""
    code, data, err = orchestrate(fleet, "traffic", fleet.env_name)
    assert code == 0, err
    return {name: int(s["weight"]) for name, s in data["servers"].items()}


def wait_scraped(fleet: FleetEnv) -> None:
    """Until Prometheus on the monitoring host scrapes every app host's service and every node."""
    monitor = fleet.group("monitoring")[0]
    expected = {("service", h.name) for h in fleet.group("app")} | {("node", h.name) for h in fleet.hosts}
    deadline = time.monotonic() + 90
    up: dict[tuple[str, str], str] = {}
    while time.monotonic() < deadline:
        up = prometheus_up(fleet, monitor.address)
        if all(up.get(target) == "1" for target in expected):
            return
        time.sleep(1)
    raise AssertionError(f"Prometheus targets not all up: {up}")


def test_high_error_rate_after_blue_green_switches_the_traffic_back(fleet_factory: Any, tmp_path: Path) -> None:
    heal_port = free_port()
    fleet: FleetEnv = fleet_factory(app_count=2, monitoring_count=1, lb_count=1, overrides={
        "healing": {"listen": f"127.0.0.1:{heal_port}"},
        "service": {"health": {"timeout": "5s", "interval": "100ms"}},
        # the gate lets a 30%-failing release through; the alert (error_ratio_threshold 5%) does not
        "rollout": {"max_error_ratio": 0.5, "max_latency": "2s"},
    })
    apps = fleet.group("app")
    code, good, err = orchestrate(fleet, "deploy", fleet.env_name, "--release", str(example_binary()))
    assert code == 0, err
    for verb in (["traffic", fleet.env_name, "--configure"], ["monitoring", "deploy", fleet.env_name]):
        code, _, err = orchestrate(fleet, *verb)
        assert code == 0, err
    code, bad, err = orchestrate(fleet, "deploy", fleet.env_name, "--release", str(flaky_binary(tmp_path)),
                                 "--strategy", "blue-green")
    assert code == 0, err
    assert bad["strategy"] == "blue-green" and bad["state"] == "switched", bad
    weights = serving(fleet)
    new_colour = {n for n, w in weights.items() if w > 0}
    old_colour = {n for n, w in weights.items() if w == 0}
    assert new_colour and old_colour
    releases = {h.name: current_release(fleet, h) for h in apps}
    assert {releases[n] for n in new_colour} == {bad["release"]}
    assert {releases[n] for n in old_colour} == {good["release"]}

    lb = fleet.group("lb")[0]
    url = f"http://{fleet.network.assert_own_address(lb.address)}/"
    stop = threading.Event()
    answers: dict[int | None, int] = {}

    def traffic() -> None:
        while not stop.is_set():
            try:
                status = http_get(url, network=fleet.network, timeout=1)[0]
            except (OSError, urllib.error.URLError):
                status = None
            answers[status] = answers.get(status, 0) + 1
            time.sleep(0.03)

    with heal_server(fleet, heal_port) as summary:
        wait_scraped(fleet)
        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                if {n for n, w in serving(fleet).items() if w > 0} == old_colour:
                    break
                time.sleep(1)
            else:
                raise AssertionError(f"the traffic was not switched back within 150 s; answers {answers}")
            time.sleep(5)  # nothing more happens: no second rollback moves a colour further back
        finally:
            stop.set()
            sender.join(timeout=10)

    assert answers.get(500, 0) > 0  # the bad release did fail requests while it served
    assert {n for n, w in serving(fleet).items() if w > 0} == old_colour
    # the switch back moved traffic, not releases: each colour still runs what it ran
    assert {h.name: current_release(fleet, h) for h in apps} == releases
    assert summary["counts"].get("succeeded") == 1, summary

    code, runs, err = orchestrate(fleet, "runs", fleet.env_name)
    assert code == 0, err
    heal_runs = [r for r in runs["runs"] if r["command"] == "heal"]
    assert [r["state"] for r in heal_runs] == ["completed"], runs
    assert heal_runs[0]["release"] == good["release"]
    code, run, err = orchestrate(fleet, "runs", fleet.env_name, heal_runs[0]["id"])
    assert code == 0, err
    (step,) = run["run"]["steps"]
    assert step["name"] == "rollback" and step["state"] == "completed"
    assert step["detail"]["strategy"] == "switch-back" and step["detail"]["alert"] == "HighErrorRate"
