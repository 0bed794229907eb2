"""Default bridge names and subnets of local fleets: derived, collision-free, kept, overridable.

Loading only reads what was kept; the subnet is chosen where the fleet is rendered, provisioned or
booted (fleet.local.network.ensure_network).
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.config.loader import Project, kept_subnet
from orchestrator.config.schema import LocalFleetVars, TerraformLocal
from orchestrator.config.types import default_bridge_name
from orchestrator.errors import HostError, UsageError
from orchestrator.fleet.guard import address_check
from orchestrator.fleet.inventory import allowed_networks
from orchestrator.fleet.local import network as network_module
from orchestrator.fleet.local.network import (
    DEFAULT_SUBNET_POOL,
    NETWORK_FILE,
    choose_subnet,
    ensure_network,
    parse_routes,
    reserved_subnets,
    resolve_network,
)
from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.fleet.render import render_environment

Net = ipaddress.IPv4Network
IFNAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")

ROUTES = """\
default via 192.0.2.1 dev eth0
10.214.66.0/24 dev ot5cf077 proto kernel scope link src 10.214.66.1
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
blackhole 10.9.0.0/16
"""


def test_routes_are_parsed_without_default_and_deviceless_ones() -> None:
    assert parse_routes(ROUTES) == [(Net("10.214.66.0/24"), "ot5cf077"), (Net("192.0.2.0/24"), "eth0")]


@pytest.mark.parametrize("prefix", ["dev", "stg", "abcdefghij", "abcdefghijk", "a" * 20, "ci-1a2b-3c4d-5e6f-7a"])
def test_default_bridge_is_a_valid_interface_name(prefix: str) -> None:
    name = default_bridge_name(prefix)
    assert IFNAME.match(name) and len(name) <= 15
    assert default_bridge_name(prefix) == name  # stable


def test_short_prefixes_read_plainly_and_long_ones_stay_distinct() -> None:
    assert default_bridge_name("dev") == "orch-dev"
    assert default_bridge_name("abcdefghij") == "orch-abcdefghij"
    long_a, long_b = default_bridge_name("staging-eu-1"), default_bridge_name("staging-eu-2")
    assert long_a != long_b and long_a.startswith("or-stagin-")


def test_the_choice_is_deterministic_inside_the_pool_and_a_24() -> None:
    first = choose_subnet("/srv/p:dev", [], own_bridge="orch-dev")
    assert choose_subnet("/srv/p:dev", [], own_bridge="orch-dev") == first
    net = Net(first)
    assert net.prefixlen == 24 and net.subnet_of(DEFAULT_SUBNET_POOL)
    # different projects and environments start at different places of the pool
    picks = {choose_subnet(f"/srv/p:env{i}", [], own_bridge="b") for i in range(20)}
    assert len(picks) > 10


def test_a_routed_subnet_is_skipped_for_the_next_one() -> None:
    first = Net(choose_subnet("/srv/p:dev", [], own_bridge="orch-dev"))
    taken = [(first, "eth1")]
    second = Net(choose_subnet("/srv/p:dev", taken, own_bridge="orch-dev"))
    assert second != first and not second.overlaps(first)
    # the walk goes on in order (wrapping at the end of the pool)
    candidates = list(DEFAULT_SUBNET_POOL.subnets(new_prefix=24))
    assert candidates.index(second) == (candidates.index(first) + 1) % len(candidates)


def test_a_wider_route_blocks_every_24_inside_it() -> None:
    first = Net(choose_subnet("/srv/p:dev", [], own_bridge="orch-dev"))
    wide = first.supernet(new_prefix=20)
    chosen = Net(choose_subnet("/srv/p:dev", [(wide, "wg0")], own_bridge="orch-dev"))
    assert not chosen.overlaps(wide)


def test_reserved_subnets_are_skipped_like_routes() -> None:
    first = Net(choose_subnet("/srv/p:dev", [], own_bridge="orch-dev"))
    chosen = Net(choose_subnet("/srv/p:dev", [], own_bridge="orch-dev", reserved=[first]))
    assert chosen != first


def test_the_own_bridge_keeps_its_subnet() -> None:
    own = Net("10.213.77.0/24")
    routes = [(own, "orch-dev"), (Net("10.213.0.0/17"), "eth1")]
    # routes via the env's own bridge do not count as taken; its current subnet is kept
    assert choose_subnet("/srv/p:dev", routes, own_bridge="orch-dev") == "10.213.77.0/24"


def test_a_full_pool_is_an_error_that_says_what_to_set() -> None:
    with pytest.raises(HostError, match=r"no free /24 left in 10\.213\.0\.0/16.*set terraform\.vars\.subnet"):
        choose_subnet("/srv/p:dev", [(Net("10.213.0.0/16"), "eth1")], own_bridge="orch-dev")


# --- resolve_network and loading -------------------------------------------------------------


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ipaddress.IPv4Network, str]]:
    """The machine's route table as the chooser sees it (a list the test may change)."""
    table: list[tuple[ipaddress.IPv4Network, str]] = []
    monkeypatch.setattr(network_module, "machine_routes", lambda: list(table))
    return table


def test_explicit_values_win_and_nothing_is_written(tmp_path: Path, routes: list) -> None:
    network = resolve_network(tmp_path, "dev", host_prefix="dev", bridge="br-x", subnet="10.50.0.0/24")
    assert (network.bridge, network.subnet) == ("br-x", "10.50.0.0/24")
    assert not (tmp_path / ".orchestrate").exists()


def test_the_chosen_subnet_is_kept_and_stays_when_routes_change(tmp_path: Path, routes: list) -> None:
    first = resolve_network(tmp_path, "qa", host_prefix="qa")
    assert first.bridge == "orch-qa"
    kept = json.loads((tmp_path / ".orchestrate" / "qa" / NETWORK_FILE).read_text())
    assert kept["subnet"] == first.subnet
    # the subnet is now routed (the fleet is up, or something else took it): still the same
    routes.append((Net(first.subnet), "eth9"))
    assert resolve_network(tmp_path, "qa", host_prefix="qa").subnet == first.subnet
    # without the file, a fresh choice avoids the route
    (tmp_path / ".orchestrate" / "qa" / NETWORK_FILE).unlink()
    assert resolve_network(tmp_path, "qa", host_prefix="qa").subnet != first.subnet


def test_existing_hosts_keep_their_subnet_when_the_file_is_lost(tmp_path: Path, routes: list) -> None:
    record = tmp_path / ".orchestrate" / "qa" / "hosts" / "qa-app-1" / "host.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"subnet": "10.213.201.0/24"}))
    assert resolve_network(tmp_path, "qa", host_prefix="qa").subnet == "10.213.201.0/24"


def _project_without_network(project: Path, env: str = "staging") -> Path:
    env_file = project / "inventories" / env / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    del data["terraform"]["vars"]["bridge"], data["terraform"]["vars"]["subnet"]
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return env_file


def test_rendering_fills_in_the_defaults_every_consumer_sees(project_copy: Path, routes: list) -> None:
    _project_without_network(project_copy)
    before = Project(project_copy).load("staging")
    assert isinstance(before.env.terraform, TerraformLocal)
    # loading derives the bridge name but chooses no subnet: nothing is written
    assert (before.env.terraform.vars.bridge, before.env.terraform.vars.subnet) == ("orch-stg", "")
    assert not (project_copy / ".orchestrate").exists()
    rendered = render_environment(before)
    loaded = rendered.loaded
    assert isinstance(loaded.env.terraform, TerraformLocal)
    fleet_vars = loaded.env.terraform.vars
    assert fleet_vars.bridge == "orch-stg"  # staging's host_prefix is stg
    subnet = Net(fleet_vars.subnet)
    assert subnet.prefixlen == 24 and subnet.subnet_of(DEFAULT_SUBNET_POOL)
    assert kept_subnet(project_copy / ".orchestrate" / "staging" / NETWORK_FILE) == fleet_vars.subnet
    # the rendered terraform vars, the host code and the Ansible guard agree
    tfvars = json.loads((rendered.terraform_dir / "terraform.tfvars.json").read_text())
    assert (tfvars["bridge"], tfvars["subnet"]) == (fleet_vars.bridge, fleet_vars.subnet)
    fleet, specs = fleet_for(loaded)
    assert (fleet.network.bridge, fleet.network.subnet) == (fleet_vars.bridge, fleet_vars.subnet)
    assert all(ipaddress.IPv4Address(s.address) in subnet for s in specs)
    assert allowed_networks(loaded) == (fleet_vars.subnet,)
    # a re-load reads the kept subnet (and so a re-render renders it), whatever the routes say now
    routes.append((subnet, "eth9"))
    assert Project(project_copy).load("staging").env.terraform.vars == fleet_vars
    assert render_environment(Project(project_copy).load("staging")).loaded.env.terraform.vars == fleet_vars


def test_loading_never_chooses_a_subnet(project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
        raise AssertionError("loading an environment must not read the machine's routes")

    monkeypatch.setattr(network_module, "machine_routes", no_routes)
    _project_without_network(project_copy)
    loaded = Project(project_copy).load("staging")
    assert loaded.env.terraform.vars.subnet == ""
    assert not (project_copy / ".orchestrate").exists()
    # consumers that connect to hosts say what to do instead of guessing
    with pytest.raises(UsageError, match=r"staging: the local fleet has no subnet yet.*orchestrate render staging"):
        allowed_networks(loaded)
    with pytest.raises(UsageError, match="no subnet yet"):
        address_check(loaded)
    # a kept file (written where the fleet was rendered) is read; a broken one is ignored
    kept = project_copy / ".orchestrate" / "staging" / NETWORK_FILE
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"subnet": "10.213.77.0/24", "bridge": "orch-stg"}))
    assert Project(project_copy).load("staging").env.terraform.vars.subnet == "10.213.77.0/24"
    kept.write_text("{not json")
    assert Project(project_copy).load("staging").env.terraform.vars.subnet == ""


def test_the_local_fleet_code_chooses_and_keeps_the_subnet(project_copy: Path, routes: list) -> None:
    _project_without_network(project_copy)
    loaded = Project(project_copy).load("staging")
    fleet, _ = fleet_for(loaded)  # `orchestrate hosts`, booting hosts: the fleet code chooses
    assert Net(fleet.network.subnet).subnet_of(DEFAULT_SUBNET_POOL)
    assert Project(project_copy).load("staging").env.terraform.vars.subnet == fleet.network.subnet
    assert ensure_network(Project(project_copy).load("staging")).env.terraform.vars.subnet == fleet.network.subnet


def test_other_environments_subnets_are_reserved_while_their_bridges_are_down(project_copy: Path) -> None:
    _project_without_network(project_copy, "staging")
    (project_copy / ".orchestrate" / "qa").mkdir(parents=True)
    (project_copy / ".orchestrate" / "qa" / NETWORK_FILE).write_text(json.dumps({"subnet": "10.213.99.0/24"}))
    reserved = reserved_subnets(project_copy, "staging")
    assert Net("10.213.10.0/24") in reserved  # dev's, from its env file
    assert Net("10.213.99.0/24") in reserved  # a default another env was given
    assert all(not n.subnet_of(Net("10.213.20.0/24")) for n in reserved)  # never its own


def test_explicit_values_in_the_env_file_still_win(project_copy: Path, routes: list) -> None:
    loaded = ensure_network(Project(project_copy).load("dev"))
    assert isinstance(loaded.env.terraform, TerraformLocal)
    assert (loaded.env.terraform.vars.bridge, loaded.env.terraform.vars.subnet) == ("orch-dev", "10.213.10.0/24")
    assert not (project_copy / ".orchestrate" / "dev" / NETWORK_FILE).exists()


def test_only_the_subnet_may_be_left_out(project_copy: Path, routes: list) -> None:
    env_file = project_copy / "inventories" / "staging" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    del data["terraform"]["vars"]["subnet"]
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet_vars = ensure_network(Project(project_copy).load("staging")).env.terraform.vars
    assert isinstance(fleet_vars, LocalFleetVars)
    assert fleet_vars.bridge == "orch-stg" and Net(fleet_vars.subnet).subnet_of(DEFAULT_SUBNET_POOL)


def test_a_bad_explicit_value_is_still_a_config_error(project_copy: Path, routes: list) -> None:
    from orchestrator.errors import ConfigError

    env_file = project_copy / "inventories" / "staging" / "environment.yml"
    env_file.write_text(env_file.read_text().replace("bridge: orch-stg", "bridge: Orch_STG"))
    with pytest.raises(ConfigError, match=r"environment\.yml:\d+: terraform\.vars\.bridge: 'Orch_STG'"):
        Project(project_copy).load("staging")
    assert not (project_copy / ".orchestrate" / "staging").exists()
