"""`orchestrate provision/destroy` on a local fleet: the local_fleet module through the same Terraform layer."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]


def test_provision_boots_the_fleet_writes_the_inventory_and_heals_a_stopped_host(
    unbooted_project: Any, run_orchestrate: Any
) -> None:
    fleet_env = unbooted_project(app_count=2, monitoring_count=1)
    project = fleet_env.project_dir

    first = run_orchestrate(project, "provision", "dev", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["applied"] is True

    inventory = yaml.safe_load(fleet_env.inventory.read_text())
    children = inventory["all"]["children"]
    assert len(children["app"]["hosts"]) == 2 and len(children["monitoring"]["hosts"]) == 1
    subnet = ipaddress.IPv4Network(fleet_env.network.subnet)
    for group in ("app", "monitoring"):
        for host_vars in children[group]["hosts"].values():
            assert ipaddress.IPv4Address(host_vars["ansible_host"]) in subnet
    assert inventory["all"]["vars"]["ansible_ssh_private_key_file"] == str(fleet_env.private_key)

    fleet = fleet_env.fleet
    names = sorted({*children["app"]["hosts"], *children["monitoring"]["hosts"]})
    assert [fleet.state(n) for n in names] == ["running"] * 3

    # A host that died is invisible to terraform (its resource is still in the state):
    # provision finds no change to apply and still boots it again.
    fleet.stop(names[0])
    assert fleet.state(names[0]) == "stopped"
    second = run_orchestrate(project, "provision", "dev", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["changes"] is False
    assert fleet.state(names[0]) == "running"

    # No terminal (stdin is /dev/null) and no --yes: refused, one line, nothing destroyed.
    refused = run_orchestrate(project, "destroy", "dev", "--json")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        "error: destroy of environment 'dev' needs confirmation, and there is no terminal to ask on; "
        "pass --yes to confirm (nothing was changed)"]
    assert [fleet.state(n) for n in names] == ["running"] * 3 and fleet_env.inventory.exists()

    gone = run_orchestrate(project, "destroy", "dev", "--yes", "--json")
    assert gone.returncode == 0, gone.stderr
    assert [fleet.state(n) for n in names] == ["missing"] * 3
    assert not fleet_env.inventory.exists()
