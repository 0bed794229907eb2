"""The whole self-healing loop on real local hosts.

Two app hosts run the example service (deployed by `orchestrate deploy`), the monitoring host runs
Prometheus and Alertmanager (`orchestrate monitoring deploy`), the controller runs
`orchestrate heal serve`. The service on one host is killed with systemd's own restart turned
off; the loop must bring it back by itself: Prometheus fires ServiceDown, Alertmanager posts it
over the bridge to the heal server, the restart playbook runs on that host only, /healthz answers
200 again, and the audit log holds the chain. A second test deploys a release that answers 5% and
more of its requests with 500 under traffic: HighErrorRate fires and the loop rolls the
environment back to the previous release, once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.runs.audit import AuditLog
from tests.support.builds import build_version
from tests.support.cli import orchestrate, spawn_orchestrate
from tests.support.fleet import FleetEnv
from tests.support.net import free_port, http_get, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "hello-service"
BINARY = EXAMPLE / "target" / "release" / "hello-service"
PORT = 8080
# Heal goal of the dev config, kill -> healthy again (median; bench/run.py --only heal measures it):
# the test itself only requires the loop to work, within 60 s.
GOAL_S = 3.0


def example_binary() -> Path:
    """The example service, built like `make example` when it is not built yet."""
    if not BINARY.exists():
        cargo = Path.home() / ".cargo" / "bin" / "cargo"
        subprocess.run([str(cargo) if cargo.exists() else "cargo", "build", "--release", "--offline",
                        "--manifest-path", str(EXAMPLE / "Cargo.toml")], check=True, timeout=1200)
    return BINARY


def service_health(fleet: FleetEnv, address: str) -> int | None:
    try:
        return http_get(f"http://{address}:{PORT}/healthz", network=fleet.network, timeout=1)[0]
    except (OSError, urllib.error.URLError):
        return None


def prometheus_up(fleet: FleetEnv, monitoring_address: str) -> dict[tuple[str, str], str]:
    base = f"http://{monitoring_address}:9090"
    status, body = http_get(f"{base}/api/v1/query?query=up", network=fleet.network, timeout=3)
    assert status == 200
    return {(r["metric"]["job"], r["metric"].get("host", "")): r["value"][1]
            for r in json.loads(body)["data"]["result"]}


def active_since(fleet: FleetEnv, host: Any) -> str:
    return str(fleet.ssh(host, "systemctl show -p ActiveEnterTimestampMonotonic --value hello.service").stdout.strip())


def flaky_binary(tmp_path: Path) -> Path:
    """The example built with the `flaky` feature: 30% of requests to / answer 500."""
    return build_version(tmp_path, "flaky", "0.1.0", "flaky")


@contextlib.contextmanager
def heal_server(fleet: FleetEnv, heal_port: int) -> Iterator[dict[str, Any]]:
    """`orchestrate heal serve ENV` in the background; yields the dict its --json summary fills."""
    serve = spawn_orchestrate(fleet.project_dir, "heal", "serve", fleet.env_name, "--json", start_new_session=True)
    summary: dict[str, Any] = {}
    try:
        wait_http(f"http://127.0.0.1:{heal_port}/healthz", timeout=30)
        wait_http(f"http://{fleet.network.gateway}:{heal_port}/healthz", network=fleet.network, timeout=5)
        yield summary
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
        out, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err
    summary.update(json.loads(out))


def wait_all_up(fleet: FleetEnv) -> None:
    """Until Prometheus on the monitoring host scrapes every service, node and HAProxy target."""
    monitor = fleet.group("monitoring")[0]
    expected = ({(job, h.name) for h in fleet.group("app") for job in ("service", "health")}
                | {("node", h.name) for h in fleet.hosts})
    expected |= {("haproxy", h.name) for h in fleet.group("lb")}  # HAProxy's exporter on a load balancer
    deadline = time.monotonic() + 90
    up: dict[tuple[str, str], str] = {}
    while time.monotonic() < deadline:
        up = {k: v for k, v in prometheus_up(fleet, monitor.address).items() if k[1]}
        if set(up) == expected and set(up.values()) == {"1"}:
            return
        time.sleep(1)
    raise AssertionError(f"Prometheus targets not all up: {up}")


def heal_entries(fleet: FleetEnv) -> list[Any]:
    """Every heal entry of the audit log, oldest first (the hash chain verified)."""
    with AuditLog(fleet.state_dir, env=fleet.env_name) as log:
        entries = log.entries(command="heal", limit=None)
        assert log.verify() >= len(entries)
    return list(reversed(entries))


def heal_chain(fleet: FleetEnv) -> list[tuple[str, str, str]]:
    """(outcome, alertname, host) of every heal entry of the audit log, oldest first."""
    return [(e.outcome, str(e.details.get("alertname")), str(e.details.get("host"))) for e in heal_entries(fleet)]


def current_release(fleet: FleetEnv, host: Any) -> str:
    return str(fleet.ssh(host, "basename $(readlink /opt/hello/current)").stdout.strip())


def test_killed_service_comes_back_by_itself(fleet_factory: Any) -> None:
    heal_port = free_port()
    fleet: FleetEnv = fleet_factory(app_count=2, monitoring_count=1,
                                    overrides={"healing": {"listen": f"127.0.0.1:{heal_port}"}})
    victim, bystander = fleet.group("app")

    code, result, err = orchestrate(fleet.project_dir, "deploy", fleet.env_name, "--release", str(example_binary()))
    assert code == 0, err
    code, result, err = orchestrate(fleet.project_dir, "monitoring", "deploy", fleet.env_name)
    assert code == 0, err
    assert result["webhook_url"] == f"http://{fleet.network.gateway}:{heal_port}/alerts"

    with heal_server(fleet, heal_port) as summary:
        wait_all_up(fleet)
        bystander_since = active_since(fleet, bystander)

        # systemd must not bring it back itself: Restart=no until the next daemon-reload from /etc.
        fleet.ssh(victim, "mkdir -p /run/systemd/system/hello.service.d && "
                          "printf '[Service]\\nRestart=no\\n' > /run/systemd/system/hello.service.d/no-restart.conf && "
                          "systemctl daemon-reload")
        killed = time.monotonic()
        fleet.ssh(victim, "systemctl kill -s KILL hello.service")
        down_seen = False
        healthy_again = None
        deadline = killed + 90
        while time.monotonic() < deadline:
            status = service_health(fleet, victim.address)
            if status != 200:
                down_seen = True
            elif down_seen:
                healthy_again = time.monotonic()
                break
            time.sleep(0.2)
        assert down_seen, "the kill did not take the service down"
        assert healthy_again is not None, "the service did not come back within 90 s"
        heal_seconds = healthy_again - killed
        # The unit was restarted by the remediation, not by systemd (its Restart= is off).
        assert fleet.ssh(victim, "systemctl show -p Restart --value hello.service").stdout.strip() == "no"
        time.sleep(3)

    assert summary["counts"].get("succeeded", 0) >= 1, summary
    assert summary["counts"].get("failed", 0) == 0, summary
    assert active_since(fleet, bystander) == bystander_since, "the other app host was restarted too"
    assert service_health(fleet, bystander.address) == 200

    chain = heal_chain(fleet)
    victim_chain = [c[0] for c in chain if c[1:] == ("ServiceDown", victim.name)]
    assert victim_chain[:3] == ["received", "acted", "succeeded"], chain
    assert not [c for c in chain if c[0] == "acted" and c[2] != victim.name], chain
    print(f"kill -> healthy: {heal_seconds:.1f} s (goal {GOAL_S:g} s)")
    assert heal_seconds < 60


def test_error_rate_rolls_the_environment_back_once(fleet_factory: Any, tmp_path: Path) -> None:
    heal_port = free_port()
    fleet: FleetEnv = fleet_factory(app_count=2, monitoring_count=1,
                                    overrides={"healing": {"listen": f"127.0.0.1:{heal_port}"}})
    apps = fleet.group("app")
    code, good, err = orchestrate(fleet.project_dir, "deploy", fleet.env_name, "--release", str(example_binary()))
    assert code == 0, err
    code, bad, err = orchestrate(fleet.project_dir, "deploy", fleet.env_name, "--release", str(flaky_binary(tmp_path)))
    assert code == 0, err  # /healthz is fine: the gate lets it through, only traffic shows the errors
    assert bad["release"] != good["release"]
    assert {current_release(fleet, h) for h in apps} == {bad["release"]}
    code, _, err = orchestrate(fleet.project_dir, "monitoring", "deploy", fleet.env_name)
    assert code == 0, err

    stop = threading.Event()
    answers: dict[int | None, int] = {}

    def traffic() -> None:
        while not stop.is_set():
            for host in apps:
                try:
                    status = http_get(f"http://{host.address}:{PORT}/", network=fleet.network, timeout=1)[0]
                except (OSError, urllib.error.URLError):
                    status = None
                answers[status] = answers.get(status, 0) + 1
            time.sleep(0.05)

    with heal_server(fleet, heal_port) as summary:
        wait_all_up(fleet)
        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if {current_release(fleet, h) for h in apps} == {good["release"]}:
                    break
                time.sleep(1)
            else:
                raise AssertionError(f"not rolled back within 120 s; answers {answers}")
            # Traffic goes on without errors; the alert clears and nothing rolls back again.
            monitor = fleet.group("monitoring")[0]
            deadline = time.monotonic() + 90
            base = f"http://{monitor.address}:9090"
            while time.monotonic() < deadline:
                body = http_get(f"{base}/api/v1/query?query=ALERTS%7Balertname%3D%22HighErrorRate%22%7D",
                                network=fleet.network)[1]
                if not json.loads(body)["data"]["result"]:
                    break
                time.sleep(1)
            else:
                raise AssertionError("HighErrorRate did not clear after the rollback")
        finally:
            stop.set()
            sender.join(timeout=10)
        assert {current_release(fleet, h) for h in apps} == {good["release"]}

    assert answers.get(500, 0) > 0  # the bad release did fail requests
    entries = heal_entries(fleet)
    chain = heal_chain(fleet)
    # One rollback for the whole environment (the other host's alert is throttled environment-wide);
    # should the alert outlive the throttle, a second rollback (back onto the bad release) is
    # refused without touching the hosts.
    results = [e for e in entries if e.outcome in ("succeeded", "failed")]
    assert {e.details.get("alertname") for e in results} == {"HighErrorRate"}, chain
    assert [e.outcome for e in results][:1] == ["succeeded"], chain
    assert all(e.outcome == "failed" and "earlier rollback" in e.details["detail"] for e in results[1:]), chain
    assert summary["counts"].get("succeeded") == 1, summary
