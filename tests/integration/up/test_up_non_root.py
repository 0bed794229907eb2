"""`orchestrate up` on hosts shaped like cloud images: staging logs in as `admin` (passwordless
sudo, root's SSH login refused), so every play runs with become. One fleet, provisioned through
terraform by the first `up`: a first release, a canary by traffic weight, a rollback (the switch
back) and a heal remediation (the restart of a killed service), all as admin.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from orchestrator.fleet.local.terraform import fleet_for
from tests.integration.monitoring.test_heal_e2e import heal_chain, heal_server, prometheus_up, service_health
from tests.support.cli import orchestrate
from tests.support.fleet import TRAFFIC_OVERRIDES, FleetEnv
from tests.support.net import free_port

from .helpers import runs

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]


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


def overrides(heal_port: int) -> dict[str, Any]:
    return {
        **TRAFFIC_OVERRIDES,
        "rollout": {**TRAFFIC_OVERRIDES["rollout"], "traffic_steps": [50, 100], "step_hold": "2s"},
        # dev's loop timings: the alert fires within seconds
        "monitoring": {"scrape_interval": "1s", "evaluation_interval": "1s", "alert_for": "2s"},
        "healing": {"listen": f"127.0.0.1:{heal_port}", "throttle": "30s"},
    }


def test_up_canary_rollback_and_heal_as_a_user_with_sudo(unbooted_project: Any, hello_builds: Any) -> None:
    heal_port = free_port()
    fleet: FleetEnv = unbooted_project(env="staging", app_count=2, monitoring_count=1, lb_count=1,
                                       overrides=overrides(heal_port))
    assert yaml.safe_load((fleet.project_dir / "inventories/staging/environment.yml").read_text()
                          )["terraform"]["vars"]["ssh_user"] == "admin"  # the shipped staging file says so

    code, first, err = orchestrate(fleet.project_dir, "up", "staging", "--release", str(hello_builds.v1.binary),
                                   "--yes", timeout=900)
    assert code == 0, err
    steps = {s["name"]: s for s in first["steps"]}
    assert steps["deploy"]["detail"]["strategy"] == "rolling"  # nothing served yet
    assert first["release"] == hello_builds.v1.release_id
    fleet.hosts = fleet_for(fleet.loaded)[1]
    inventory = yaml.safe_load(fleet.inventory.read_text())
    assert inventory["all"]["vars"]["ansible_user"] == "admin"
    for host in fleet.hosts:
        assert fleet.ssh(host, "id -un", user="admin").stdout.strip() == "admin"
        refused = fleet.ssh(host, "true", user="root", check=False)
        assert refused.returncode == 255 and "Permission denied" in refused.stderr, host.name

    # canary by weight through the LB (staging's own bounded load gives the gates traffic)
    code, second, err = orchestrate(fleet.project_dir, "up", "staging", "--release", str(hello_builds.v2.binary),
                                    "--yes", timeout=900)
    assert code == 0, err
    deploy = {s["name"]: s for s in second["steps"]}["deploy"]["detail"]
    assert (deploy["strategy"], deploy["state"]) == ("canary-traffic", "promoted"), deploy
    assert [d["step"] for d in deploy["decisions"]] == [50, 100] and all(d["go"] for d in deploy["decisions"])
    served = {h["name"]: h["release"] for h in second["status"]["hosts"]}
    assert hello_builds.v2.release_id in served.values()

    # rollback: the switch back to the colour that served before, on its old release
    code, back, err = orchestrate(fleet.project_dir, "rollback", "staging", "--yes")
    assert code == 0, err
    assert (back["strategy"], back["state"]) == ("switch-back", "switched_back"), back
    assert back["release"] == hello_builds.v1.release_id
    serving = [h for h in fleet.group("app") if back["weights"][h.name] > 0]
    assert serving

    # heal: the service on a serving host is killed (systemd's own restart off); the restart
    # remediation, run as admin with become, brings it back
    victim = serving[0]
    with heal_server(fleet, heal_port) as summary:
        wait_scraped(fleet)
        fleet.ssh(victim, "mkdir -p /run/systemd/system/hello.service.d && "
                          "printf '[Service]\\nRestart=no\\n' > /run/systemd/system/hello.service.d/no-restart.conf && "
                          "systemctl daemon-reload && systemctl kill -s KILL hello.service")
        deadline, down_seen, back_up = time.monotonic() + 90, False, False
        while time.monotonic() < deadline and not back_up:
            status = service_health(fleet, victim.address)
            down_seen = down_seen or status != 200
            back_up = down_seen and status == 200
            time.sleep(0.2)
        assert down_seen and back_up, "the killed service did not come back within 90 s"
        time.sleep(2)
    assert summary["counts"].get("succeeded", 0) >= 1 and summary["counts"].get("failed", 0) == 0, summary
    assert [c[0] for c in heal_chain(fleet) if c[1:] == ("ServiceDown", victim.name)][:3] == [
        "received", "acted", "succeeded"]
    heal_runs = [r for r in runs(fleet) if r["command"] == "heal"]
    assert heal_runs and heal_runs[0]["state"] == "completed", heal_runs
