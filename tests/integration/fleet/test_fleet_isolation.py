"""Fleets stay apart: two fleets side by side (destroying one leaves the other running), and
Ansible never connects to an inventory host that is not on the project's own bridge."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.fleet.local.supervisor import CGROUP_HIERARCHIES, CGROUP_PARENT, CGROUP_ROOT
from orchestrator.tools.process import run_command
from tests.support.cli import run_orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.hosts]

BIN = Path(sys.executable).parent


def link_names() -> set[str]:
    out = run_command(["ip", "-o", "link"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def bridge_ports(bridge: str) -> set[str]:
    out = run_command(["ip", "-o", "link", "show", "master", bridge], check=False).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def test_two_fleets_side_by_side_and_destroying_one_leaves_the_other(fleet_factory: Any) -> None:
    first, second = fleet_factory(app_count=1), fleet_factory(app_count=1)
    assert first.network.bridge != second.network.bridge
    assert not first.network.network.overlaps(second.network.network)
    gone, kept = first.hosts[0], second.hosts[0]
    gone_ports = bridge_ports(first.network.bridge)
    assert len(gone_ports) == 1 and len(bridge_ports(second.network.bridge)) == 1
    gone_dir = first.fleet.host_dir(gone.name)
    leader_before = second.fleet.supervisor_pid(kept.name)

    first.destroy()

    # the destroyed fleet left nothing: mount, cgroups, veth, bridge, host dir
    assert str(gone_dir) not in Path("/proc/mounts").read_text()
    for hierarchy in CGROUP_HIERARCHIES:
        assert not (CGROUP_ROOT / hierarchy / CGROUP_PARENT / gone.name).exists()
    links = link_names()
    assert not gone_ports & links
    assert first.network.bridge not in links
    assert not gone_dir.exists()
    # the other one did not notice: same supervisor, bridge and port there, host answers over SSH
    assert second.fleet.state(kept.name) == "running"
    assert second.fleet.supervisor_pid(kept.name) == leader_before
    assert second.network.bridge in links and len(bridge_ports(second.network.bridge)) == 1
    assert second.ssh(kept, "hostname").stdout.strip() == kept.name
    assert second.ssh(kept, "systemctl is-system-running", check=False).stdout.strip() in {"running", "degraded"}


def test_ansible_refuses_an_inventory_host_off_the_bridge(fleet_factory: Any) -> None:
    fleet_env = fleet_factory(app_count=1)
    host = fleet_env.hosts[0]
    runs = fleet_env.state_dir / "runs"

    # as written by the fleet: status reaches the host (nothing deployed yet, so not healthy)
    before = run_orchestrate(fleet_env.project_dir, "status", "dev", "--json", timeout=300)
    reached = json.loads(before.stdout)["hosts"]
    assert [(h["name"], h["address"]) for h in reached] == [(host.name, host.address)], before.stderr
    assert reached[0]["unit"] != "unreachable", before.stderr
    runs_before = sorted(p.name for p in runs.iterdir()) if runs.exists() else []

    # point the app host at an address that is not on the bridge (loopback: this machine)
    inventory = yaml.safe_load(fleet_env.inventory.read_text())
    inventory["all"]["children"]["app"]["hosts"][host.name]["ansible_host"] = "127.0.0.1"
    fleet_env.inventory.write_text(yaml.safe_dump(inventory, sort_keys=False))
    refusal = (f"{fleet_env.inventory}: host {host.name} has address 127.0.0.1, which is not a host address on "
               f"the project's own bridge ({fleet_env.network.subnet}); refusing to connect (nothing was run)")

    # the direct probes of status and the playbook of a rollback are refused alike
    for argv in (["status", "dev"], ["rollback", "dev"]):
        refused = run_orchestrate(fleet_env.project_dir, *argv, timeout=300)
        assert refused.returncode != 0, argv
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {refusal}"], (argv, refused.stderr)
        assert "Traceback" not in refused.stderr
    # no ansible run was even prepared
    assert (sorted(p.name for p in runs.iterdir()) if runs.exists() else []) == runs_before
