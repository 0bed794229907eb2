"""The local fleet end to end through terraform: provision, reach over SSH with Ansible, restore
a killed host with its data, destroy without leftovers (mounts, cgroups, veths, bridge)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.fleet.local.fleet import plan_hosts
from orchestrator.fleet.local.supervisor import CGROUP_HIERARCHIES, CGROUP_PARENT, CGROUP_ROOT
from orchestrator.tools.process import run_command
from tests.support.cli import run_orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

BIN = Path(sys.executable).parent


def ansible_adhoc(inventory: Path, tree: Path, module: str, args: str = "") -> dict[str, Any]:
    """Per-host results of an ad-hoc Ansible run (the tree callback writes one JSON file per host)."""
    argv = [str(BIN / "ansible"), "all", "-i", str(inventory), "-m", module]
    if args:
        argv += ["-a", args]
    shutil.rmtree(tree, ignore_errors=True)
    result = run_command(
        argv,
        env={"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
             "ANSIBLE_CALLBACK_TREE_DIR": str(tree), "PATH": f"{BIN}:{os.environ['PATH']}"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {path.name: json.loads(path.read_text()) for path in tree.iterdir()}


def nspawn_pid(name: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"systemd-nspawn") and f"--machine={name}".encode() in argv:
                return int(entry.name)
    raise AssertionError(f"no systemd-nspawn process for {name}")


def bridge_ports(bridge: str) -> list[str]:
    out = run_command(["ip", "-o", "link", "show", "master", bridge], check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def test_provision_reach_restore_destroy(unbooted_project: Any) -> None:
    fleet_env = unbooted_project(app_count=3, monitoring_count=0)
    project = fleet_env.project_dir

    # provision: terraform apply of the rendered root, host creation in its provisioners
    result = run_orchestrate(project, "provision", "dev", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    provisioned = json.loads(result.stdout)
    expected = plan_hosts(fleet_env.prefix, fleet_env.network, app_count=3)
    assert [(h["name"], h["address"], h["groups"]) for h in provisioned["hosts"]] == [
        (h.name, h.address, list(h.groups)) for h in expected
    ]
    assert [h.address for h in expected] == [f"{fleet_env.network.network.network_address + i}" for i in (10, 11, 12)]
    inventory = Path(provisioned["inventory"])

    # every host answers Ansible over SSH and runs systemd
    pings = ansible_adhoc(inventory, project / "tree", "ansible.builtin.ping")
    assert {name: r.get("ping") for name, r in pings.items()} == {h.name: "pong" for h in expected}
    facts = ansible_adhoc(inventory, project / "tree", "ansible.builtin.setup", "filter=ansible_service_mgr")
    assert {name: r["ansible_facts"]["ansible_service_mgr"] for name, r in facts.items()} == {
        h.name: "systemd" for h in expected
    }

    # kill one host's nspawn process: provision brings it back with its data
    victim = expected[1]
    fleet_env.hosts = expected
    fleet_env.ssh(victim, "echo precious > /root/keep.txt && sync")
    ports_before = bridge_ports(fleet_env.network.bridge)
    assert len(ports_before) == 3
    os.kill(nspawn_pid(victim.name), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = json.loads(run_orchestrate(project, "hosts", "dev", "--json").stdout)["hosts"]
        if {h["name"]: h["state"] for h in states}[victim.name] == "stopped":
            break
        time.sleep(0.2)
    assert {h["name"]: h["state"] for h in states} == {
        h.name: ("stopped" if h is victim else "running") for h in expected
    }
    result = run_orchestrate(project, "provision", "dev", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["changes"] is False  # terraform saw nothing: the restore did it
    states = json.loads(run_orchestrate(project, "hosts", "dev", "--json").stdout)["hosts"]
    assert {h["state"] for h in states} == {"running"}
    assert fleet_env.ssh(victim, "cat /root/keep.txt").stdout == "precious\n"
    assert fleet_env.ssh(victim, "systemctl is-system-running", check=False).stdout.strip() in {"running", "degraded"}

    # destroy: nothing of the hosts is left on the machine
    host_dirs = [fleet_env.state_dir / "hosts" / h.name for h in expected]
    ports = bridge_ports(fleet_env.network.bridge)
    assert len(ports) == 3
    result = run_orchestrate(project, "destroy", "dev", "--yes", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    mounts = Path("/proc/mounts").read_text()
    assert not any(str(d) in mounts for d in host_dirs)
    assert str(project) not in mounts
    for h in expected:
        for hierarchy in CGROUP_HIERARCHIES:
            assert not (CGROUP_ROOT / hierarchy / CGROUP_PARENT / h.name).exists()
        assert not (fleet_env.state_dir / "hosts" / h.name).exists()
    links = run_command(["ip", "-o", "link"]).stdout
    link_names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    assert not set(ports_before + ports) & link_names
    assert fleet_env.network.bridge not in link_names
    states = json.loads(run_orchestrate(project, "hosts", "dev", "--json").stdout)["hosts"]
    assert {h["state"] for h in states} == {"missing"}
