"""A local host whose launcher (its supervisor process) died while the container kept running.

`orchestrate hosts` says what is true (running, launcher dead) and `orchestrate provision` adopts
the running container with a new launcher, without restarting it, and says so. The adopted host
still reboots and stops as any other.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.fleet.local.fleet import plan_hosts
from orchestrator.fleet.local.processes import container_leader
from orchestrator.tools.process import CommandResult, run_command

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

BIN = Path(sys.executable).parent


def orchestrate(project: Path, *args: str) -> CommandResult:
    return run_command([BIN / "orchestrate", "--project-dir", project, *args], timeout=600, check=False)


def hosts(project: Path) -> dict[str, dict[str, Any]]:
    result = orchestrate(project, "hosts", "dev", "--json")
    assert result.returncode == 0, result.stderr
    return {h["name"]: h for h in json.loads(result.stdout)["hosts"]}


def kill_launcher(fleet: Any, name: str) -> None:
    """SIGKILL the host's supervisor only; wait until it is gone."""
    pid = fleet.supervisor_pid(name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while fleet.supervisor_pid(name) is not None:
        assert time.monotonic() < deadline, "the supervisor survived SIGKILL"
        time.sleep(0.05)


def test_a_container_without_its_launcher_is_running_and_provision_adopts_it(unbooted_project: Any) -> None:
    fleet_env = unbooted_project(app_count=2, monitoring_count=0)
    project = fleet_env.project_dir
    result = orchestrate(project, "provision", "dev", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    fleet_env.hosts = plan_hosts(fleet_env.prefix, fleet_env.network, app_count=2)
    fleet = fleet_env.fleet
    victim, other = fleet_env.hosts
    assert {n: (h["state"], h["launcher"]) for n, h in hosts(project).items()} == {
        victim.name: ("running", "alive"), other.name: ("running", "alive")}

    fleet_env.ssh(victim, "echo kept > /run/only-in-this-boot")  # /run is a tmpfs: a reboot loses it
    leader = container_leader(victim.name)
    kill_launcher(fleet, victim.name)

    # the container still runs and answers: the state says so, and who is missing
    assert fleet_env.ssh(victim, "systemctl is-system-running", check=False).stdout.strip() in {"running", "degraded"}
    assert {n: (h["state"], h["launcher"]) for n, h in hosts(project).items()} == {
        victim.name: ("running", "dead"), other.name: ("running", "alive")}
    table = orchestrate(project, "hosts", "dev")
    assert f"{victim.name}\t{victim.address}\tapp\trunning\tdead" in table.stdout.splitlines()

    # provision adopts it, says so, and does not restart it
    adopted = orchestrate(project, "provision", "dev")
    assert adopted.returncode == 0, adopted.stderr[-3000:]
    assert f"{victim.name}: adopted: its container ran without its launcher" in adopted.stdout
    assert "was not restarted" in adopted.stdout and other.name not in adopted.stdout.split("inventory:")[1]
    assert container_leader(victim.name) == leader
    assert fleet_env.ssh(victim, "cat /run/only-in-this-boot").stdout == "kept\n"
    assert {h["launcher"] for h in hosts(project).values()} == {"alive"}
    runs = json.loads(orchestrate(project, "runs", "dev", "--json").stdout)["runs"]
    detail = json.loads(orchestrate(project, "runs", "dev", runs[0]["id"], "--json").stdout)["run"]
    assert detail["steps"][0]["detail"]["host_actions"] == [
        {"host": victim.name, "action": "adopted", "detail": adopted.stdout.split(f"{victim.name}: adopted: ")[1]
         .splitlines()[0]}]

    # the new launcher does what the old one did: a reboot comes back, a stop stays down
    fleet_env.ssh(victim, "systemctl reboot", check=False)
    deadline = time.monotonic() + 60
    while container_leader(victim.name) in (None, leader):
        assert time.monotonic() < deadline, "the adopted container did not come back after its reboot"
        time.sleep(0.2)
    fleet.wait_ready([victim.name], timeout=60)
    assert fleet_env.ssh(victim, "test -e /run/only-in-this-boot", check=False).returncode == 1
    kill_launcher(fleet, victim.name)
    assert orchestrate(project, "provision", "dev").returncode == 0
    assert fleet.launcher(victim.name) == "alive"
    fleet.stop(victim.name)
    assert hosts(project)[victim.name]["state"] == "stopped"
    booted = orchestrate(project, "provision", "dev", "--json")
    assert booted.returncode == 0, booted.stderr[-3000:]
    assert [(a["host"], a["action"]) for a in json.loads(booted.stdout)["host_actions"]] == [(victim.name, "booted")]
