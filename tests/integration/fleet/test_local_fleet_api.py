"""The local-host API on real hosts: idempotent ensure, reboot relaunch, the address guard,
the shared fixture itself, and the module's plan matching the Python plan."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import HostError
from orchestrator.fleet.local.fleet import HostSpec, plan_hosts
from orchestrator.fleet.local.network import FleetNetwork
from orchestrator.fleet.local.processes import container_leader
from orchestrator.tools.process import run_command

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.integration
@pytest.mark.hosts
def test_fixture_fleet_is_reachable_and_ensure_is_idempotent(fleet_factory: Any) -> None:
    fleet_env = fleet_factory(app_count=2, monitoring_count=1)
    assert [h.name for h in fleet_env.hosts] == [
        f"{fleet_env.prefix}-app-1", f"{fleet_env.prefix}-app-2", f"{fleet_env.prefix}-mon-1"
    ]
    assert fleet_env.inventory.is_file()
    oct_mode = oct(fleet_env.private_key.stat().st_mode & 0o777)
    assert oct_mode == "0o600"
    # strict host key checking against the known_hosts the fleet wrote: no prompt, no TOFU
    for host in fleet_env.hosts:
        assert fleet_env.ssh(host, "hostname").stdout.strip() == host.name
        address = fleet_env.ssh(host, "ip -4 -o addr show dev host0").stdout
        assert f"{host.address}/24" in address
    # every host has a host key of its own (generated per host, never the image's), and the
    # known_hosts the fleet wrote holds exactly those keys
    host_keys = {h.name: fleet_env.ssh(h, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
                 for h in fleet_env.hosts}
    assert len(set(host_keys.values())) == len(fleet_env.hosts) == 3
    known = {line.split()[0]: line.split()[2] for line in fleet_env.known_hosts.read_text().splitlines() if line}
    assert {h.address: host_keys[h.name] for h in fleet_env.hosts} == {
        h.address: known[h.address] for h in fleet_env.hosts}
    mon = fleet_env.group("monitoring")[0]
    enabled = fleet_env.ssh(mon, "systemctl is-enabled prometheus prometheus-alertmanager haproxy", check=False)
    assert enabled.stdout.split() == ["disabled", "disabled", "disabled"]

    fleet = fleet_env.fleet
    app = fleet_env.hosts[0]
    supervisor = fleet.supervisor_pid(app.name)
    leader = container_leader(app.name)
    fleet.ensure(app)
    assert fleet.supervisor_pid(app.name) == supervisor
    assert container_leader(app.name) == leader

    # guard: nothing outside the fleet's own bridge subnet
    with pytest.raises(HostError, match="own bridge"):
        fleet.network.assert_own_address("192.0.2.1")
    with pytest.raises(HostError, match="own bridge"):
        fleet.ensure(HostSpec(f"{fleet_env.prefix}-x", "10.99.0.10", ("app",)))


@pytest.mark.integration
@pytest.mark.hosts
def test_reboot_relaunches_and_stop_start_keeps_data(fleet_factory: Any) -> None:
    fleet_env = fleet_factory(app_count=1)
    fleet = fleet_env.fleet
    host = fleet_env.hosts[0]
    fleet_env.ssh(host, "echo kept > /var/tmp/kept && sync")
    leader = container_leader(host.name)
    fleet_env.ssh(host, "systemctl reboot", check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = container_leader(host.name)
        if current is not None and current != leader:
            break
        time.sleep(0.2)
    assert container_leader(host.name) not in (None, leader)
    fleet.wait_ready([host.name], timeout=30)
    assert fleet_env.ssh(host, "cat /var/tmp/kept").stdout == "kept\n"
    log = (fleet.host_dir(host.name) / "console.log").read_text()
    assert log.count("Spawning container") == 2

    fleet.stop(host.name)
    assert fleet.state(host.name) == "stopped"
    assert str(fleet.host_dir(host.name) / "merged") not in Path("/proc/mounts").read_text()
    fleet.ensure(host)
    assert fleet.state(host.name) == "running"
    assert fleet_env.ssh(host, "cat /var/tmp/kept").stdout == "kept\n"


@pytest.mark.integration
def test_module_plans_the_same_hosts_as_python(tmp_path: Path) -> None:
    """terraform/modules/local_fleet computes names, groups and addresses like plan_hosts."""
    root = tmp_path / "root"
    root.mkdir()
    module = REPO / "terraform" / "modules" / "local_fleet"
    (root / "main.tf").write_text(
        f'module "fleet" {{\n  source = "{module}"\n  host_prefix = "pt"\n  app_count = 3\n'
        '  monitoring_count = 1\n  lb_count = 1\n  bridge = "ptbr"\n  subnet = "10.214.77.0/24"\n'
        f'  state_dir = "{tmp_path}/hosts"\n  python = "/usr/bin/python3"\n  project_dir = "{tmp_path}"\n}}\n'
        'output "hosts" {\n  value = module.fleet.hosts\n}\n'
    )
    env = {"TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull}
    run_command(["terraform", "init", "-input=false", "-no-color"], cwd=root, env=env, timeout=120)
    run_command(["terraform", "plan", "-input=false", "-no-color", "-out=plan.tfplan"], cwd=root, env=env,
                timeout=120)
    shown = json.loads(run_command(["terraform", "show", "-json", "plan.tfplan"], cwd=root, env=env).stdout)
    planned = shown["planned_values"]["outputs"]["hosts"]["value"]
    expected = plan_hosts("pt", FleetNetwork("ptbr", "10.214.77.0/24"), app_count=3, monitoring_count=1, lb_count=1)
    assert [(h["name"], h["address"], h["private_address"], h["groups"]) for h in planned] == [
        (h.name, h.address, h.address, list(h.groups)) for h in expected
    ]
    assert [h.name for h in expected] == ["pt-app-1", "pt-app-2", "pt-app-3", "pt-mon-1", "pt-lb-1"]
    assert expected[-1].address == "10.214.77.14"


@pytest.mark.integration
def test_module_rejects_bad_variables_listing_valid_values(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    module = REPO / "terraform" / "modules" / "local_fleet"
    (root / "main.tf").write_text(
        f'module "fleet" {{\n  source = "{module}"\n  host_prefix = "pt"\n  monitoring_count = 2\n'
        '  bridge = "ptbr"\n  subnet = "8.8.8.0/24"\n'
        f'  state_dir = "{tmp_path}/hosts"\n  python = "/usr/bin/python3"\n  project_dir = "{tmp_path}"\n}}\n'
    )
    env = {"TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull}
    run_command(["terraform", "init", "-input=false", "-no-color"], cwd=root, env=env, timeout=120)
    result = run_command(["terraform", "plan", "-input=false", "-no-color"], cwd=root, env=env, check=False)
    assert result.returncode == 1
    assert "monitoring_count must be one of 0, 1." in result.stderr
    assert "subnet must be private" in result.stderr
