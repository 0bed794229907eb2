"""The address guard where Ansible connects: `run_playbook` refuses inventories that leave the bridge."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.errors import HostError
from orchestrator.fleet.inventory import ConnectionSettings, Host, allowed_networks, build_inventory, write_inventory
from orchestrator.tools.ansible import PlaybookRun, check_inventory_addresses, run_playbook

SUBNET = "10.213.10.0/24"


def _inventory(tmp_path: Path, *hosts: Host) -> Path:
    connection = ConnectionSettings(user="root", private_key=tmp_path / "id_ed25519")
    return write_inventory(tmp_path / "inventory.yml", build_inventory("dev", hosts, connection))


def test_hosts_on_the_bridge_pass(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, Host("dev-app-1", "10.213.10.10", ("app",)),
                           Host("dev-mon-1", "10.213.10.254", ("monitoring",)))
    check_inventory_addresses(inventory, [SUBNET])  # no error


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("192.0.2.10", "another network"),
        ("10.213.11.10", "the neighbouring subnet"),
        ("10.213.10.1", "the bridge's own address: the controller"),
        ("10.213.10.0", "the network address"),
        ("10.213.10.255", "the broadcast address"),
        ("db.example.com", "a DNS name, which could resolve anywhere"),
        ("{{ lookup('env', 'TARGET') }}", "a template"),
    ],
)
def test_anything_else_is_refused_naming_file_host_and_address(tmp_path: Path, address: str, why: str) -> None:
    inventory = _inventory(tmp_path, Host("dev-app-1", "10.213.10.10", ("app",)),
                           Host("dev-app-2", address, ("app",)))
    with pytest.raises(HostError) as refused:
        check_inventory_addresses(inventory, [SUBNET])
    assert refused.value.message == (
        f"{inventory}: host dev-app-2 has address {address}, which is not a host address on the project's own "
        f"bridge ({SUBNET}); refusing to connect (nothing was run)"), why


def test_a_host_without_ansible_host_is_checked_by_its_name(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"app": {"hosts": {
        "10.213.10.12": None, "evil.example.com": {"private_address": "10.213.10.13"}}}}}}))
    with pytest.raises(HostError, match=r"host evil\.example\.com has address evil\.example\.com"):
        check_inventory_addresses(inventory, [SUBNET])
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"10.213.10.12": None}}}))
    check_inventory_addresses(inventory, [SUBNET])


def test_nested_groups_and_top_level_hosts_are_all_checked(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "hosts": {"a": {"ansible_host": "10.213.10.10"}},
        "children": {"web": {"children": {"canary": {"hosts": {"b": {"ansible_host": "10.0.0.5"}}}}}},
    }}))
    with pytest.raises(HostError, match=r"host b has address 10\.0\.0\.5"):
        check_inventory_addresses(inventory, [SUBNET])


def test_run_playbook_refuses_before_anything_runs(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, Host("dev-app-1", "127.0.0.1", ("app",)))
    playbook = tmp_path / "site.yml"
    playbook.write_text("- hosts: all\n  tasks: []\n")
    runs = tmp_path / "runs"
    run = PlaybookRun(playbook=playbook, inventory=inventory, project_dir=tmp_path, runs_dir=runs,
                      allowed_networks=(SUBNET,))
    with pytest.raises(HostError, match=r"host dev-app-1 has address 127\.0\.0\.1"):
        run_playbook(run)
    assert not runs.exists()  # no run dir, no ansible.cfg, no ansible-runner


def test_allowed_networks_of_an_environment(project_copy: Path) -> None:
    project = Project(project_copy)
    assert allowed_networks(project.load("dev")) == ("10.213.10.0/24",)
    assert allowed_networks(project.load("staging")) == ("10.213.20.0/24",)
    assert allowed_networks(project.load("prod")) is None  # cloud addresses come from the provider
