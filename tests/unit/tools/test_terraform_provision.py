"""Pure parts of orchestrator.fleet.provision: the confirmation rule and the inventory from outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.errors import TerraformError, UsageError
from orchestrator.fleet.provision import hosts_from_outputs, needs_confirmation, write_inventory_from_outputs

OUTPUTS = {
    "ssh_user": "admin",
    "hosts": [
        {"name": "p-app-1", "address": "54.0.0.1", "private_address": "10.40.1.5", "groups": ["app"]},
        {"name": "p-app-2", "address": "54.0.0.2", "private_address": "10.40.2.5", "groups": ["app"]},
        {"name": "p-mon", "address": "54.0.0.3", "private_address": "10.40.1.4", "groups": ["monitoring"]},
    ],
}


def test_protected_env_needs_a_terminal_or_yes(project_copy: Path) -> None:
    prod = Project(project_copy).load("prod")
    dev = Project(project_copy).load("dev")
    assert prod.env.protected and not dev.env.protected
    assert needs_confirmation(prod, action="provision", yes=False, interactive=True) is True
    assert needs_confirmation(prod, action="provision", yes=True, interactive=False) is False
    assert needs_confirmation(dev, action="provision", yes=False, interactive=False) is False
    with pytest.raises(UsageError, match="'prod' is protected: destroy needs confirmation") as refused:
        needs_confirmation(prod, action="destroy", yes=False, interactive=False)
    assert refused.value.exit_status == 2


def test_destroy_needs_a_terminal_or_yes_on_every_environment(project_copy: Path) -> None:
    dev = Project(project_copy).load("dev")
    assert not dev.env.protected
    assert needs_confirmation(dev, action="destroy", yes=False, interactive=True, always=True) is True
    assert needs_confirmation(dev, action="destroy", yes=True, interactive=False, always=True) is False
    with pytest.raises(UsageError) as refused:
        needs_confirmation(dev, action="destroy", yes=False, interactive=False, always=True)
    assert refused.value.exit_status == 2
    assert refused.value.message == (
        "destroy of environment 'dev' needs confirmation, and there is no terminal to ask on; "
        "pass --yes to confirm (nothing was changed)")


def test_destroy_without_yes_and_without_a_terminal_exits_2_before_touching_anything(project_copy: Path) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "destroy", "dev"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: destroy of environment 'dev' needs confirmation, and there is no terminal to ask on; "
        "pass --yes to confirm (nothing was changed)"]
    # refused before the lock, the journal or terraform: no state was created
    assert not (project_copy / ".orchestrate" / "dev").exists()


def test_inventory_from_outputs_has_groups_addresses_and_the_connection(project_copy: Path) -> None:
    loaded = Project(project_copy).load("prod")
    path, hosts = write_inventory_from_outputs(loaded, OUTPUTS)
    assert path == project_copy / ".orchestrate" / "prod" / "inventory.yml"
    assert [h.name for h in hosts] == ["p-app-1", "p-app-2", "p-mon"]
    inventory = yaml.safe_load(path.read_text())
    children = inventory["all"]["children"]
    assert children["app"]["hosts"]["p-app-2"] == {"ansible_host": "54.0.0.2", "private_address": "10.40.2.5"}
    assert list(children["monitoring"]["hosts"]) == ["p-mon"]
    assert inventory["all"]["vars"]["ansible_user"] == "admin"
    assert inventory["all"]["vars"]["ansible_ssh_private_key_file"] == str(
        project_copy / ".orchestrate" / "ssh" / "id_ed25519")
    assert str(project_copy / ".orchestrate" / "prod" / "known_hosts") in inventory["all"]["vars"][
        "ansible_ssh_common_args"]


def test_outputs_without_hosts_are_an_error() -> None:
    with pytest.raises(TerraformError, match="no `hosts` list"):
        hosts_from_outputs({"ssh_user": "admin"})
    assert hosts_from_outputs({"hosts": []}) == []
