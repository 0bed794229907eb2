"""Pure logic of orchestrator.fleet.local: addresses, the guard, the recipe hash, the image cache."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from orchestrator.errors import HostError
from orchestrator.fleet.local.fleet import HostSpec, network_file, plan_hosts
from orchestrator.fleet.local.image import (
    RECIPE,
    ImageRecipe,
    ImageStore,
    debootstrap_argv,
    mirror_from_list,
    mirror_from_sources,
    prune_images,
)
from orchestrator.fleet.local.keys import known_hosts_without
from orchestrator.fleet.local.network import FleetNetwork
from orchestrator.fleet.local.supervisor import nspawn_argv
from orchestrator.fleet.local.terraform import TerraformHost, _hosts_from_outputs

NET = FleetNetwork("orch-dev", "10.213.10.0/24")


def test_plan_orders_apps_then_monitoring_then_lb_from_dot_ten() -> None:
    hosts = plan_hosts("dev", NET, app_count=3, monitoring_count=1, lb_count=1)
    assert [(h.name, h.address, h.groups) for h in hosts] == [
        ("dev-app-1", "10.213.10.10", ("app",)),
        ("dev-app-2", "10.213.10.11", ("app",)),
        ("dev-app-3", "10.213.10.12", ("app",)),
        ("dev-mon-1", "10.213.10.13", ("monitoring",)),
        ("dev-lb-1", "10.213.10.14", ("lb",)),
    ]


def test_plan_without_monitoring_and_lb() -> None:
    assert [h.name for h in plan_hosts("x", NET, app_count=2)] == ["x-app-1", "x-app-2"]


def test_gateway_is_first_usable_address() -> None:
    assert NET.gateway == "10.213.10.1"
    assert FleetNetwork("b", "10.214.8.0/22").gateway == "10.214.8.1"
    assert NET.prefixlen == 24


def test_small_subnet_runs_out_of_addresses() -> None:
    net = FleetNetwork("b", "10.1.1.0/28")  # .10 .. .14 usable, .15 is broadcast
    assert net.host_address(4) == "10.1.1.14"
    with pytest.raises(HostError, match="no room"):
        net.host_address(5)


@pytest.mark.parametrize("address", ["10.213.10.10", "10.213.10.2", "10.213.10.254"])
def test_guard_accepts_host_addresses_of_own_subnet(address: str) -> None:
    assert NET.assert_own_address(address) == address


@pytest.mark.parametrize(
    "address",
    ["10.213.11.10", "192.0.2.1", "8.8.8.8", "127.0.0.1", "10.213.10.0", "10.213.10.255", "10.213.10.1",
     "not-an-ip", "10.213.10.10/24", "::1"],
)
def test_guard_refuses_everything_else(address: str) -> None:
    with pytest.raises(HostError):
        NET.assert_own_address(address)


def test_host_names_are_validated() -> None:
    with pytest.raises(HostError, match="not a host name"):
        HostSpec("Bad_Name", "10.213.10.10")


def test_recipe_hash_is_stable_order_insensitive_and_follows_the_packages() -> None:
    base = ImageRecipe()
    assert base.hash == ImageRecipe(packages=tuple(reversed(RECIPE))).hash
    assert len(base.hash) == 16 and int(base.hash, 16) >= 0
    assert ImageRecipe(packages=(*RECIPE, "jq")).hash != base.hash
    assert ImageRecipe(prep_version=base.prep_version + 1).hash != base.hash
    assert ImageRecipe(suite="trixie").hash != base.hash


def test_recipe_has_what_the_hosts_need() -> None:
    for package in ("systemd", "openssh-server", "python3", "prometheus", "prometheus-alertmanager", "haproxy"):
        assert package in RECIPE


def _fake_cache(store: ImageStore, recipe: ImageRecipe, tmp_path: Path) -> None:
    content = tmp_path / "content"
    (content / "etc").mkdir(parents=True)
    (content / "etc" / "os-release").write_text("ID=debian\n")
    store.cache_dir.mkdir(parents=True)
    with tarfile.open(store.tarball(recipe), "w") as tar:
        tar.add(content, arcname=".")
    digest = hashlib.sha256(store.tarball(recipe).read_bytes()).hexdigest()
    store.sidecar(recipe).write_text(f"{digest}  {store.tarball(recipe).name}\n")


def test_cache_with_matching_sidecar_is_valid_and_unpacks(tmp_path: Path) -> None:
    store = ImageStore(cache_dir=tmp_path / "cache", root_dir=tmp_path / "images")
    recipe = ImageRecipe()
    _fake_cache(store, recipe, tmp_path)
    assert store.cache_valid(recipe)
    rootfs = store.ensure(recipe)  # no build: the cache is valid, only tar runs
    assert rootfs == tmp_path / "images" / recipe.hash / "rootfs"
    assert (rootfs / "etc" / "os-release").read_text() == "ID=debian\n"
    assert store.unpacked(recipe)


def test_corrupt_or_partial_cache_is_detected(tmp_path: Path) -> None:
    store = ImageStore(cache_dir=tmp_path / "cache", root_dir=tmp_path / "images")
    recipe = ImageRecipe()
    assert not store.cache_valid(recipe)  # nothing there
    _fake_cache(store, recipe, tmp_path)
    with open(store.tarball(recipe), "r+b") as handle:  # one flipped byte
        handle.seek(600)
        byte = handle.read(1)
        handle.seek(600)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert not store.cache_valid(recipe)
    store.sidecar(recipe).unlink()  # interrupted before the sidecar was written
    assert not store.cache_valid(recipe)
    store.sidecar(recipe).write_text("")
    assert not store.cache_valid(recipe)


def test_unpacked_needs_the_completion_marker(tmp_path: Path) -> None:
    store = ImageStore(cache_dir=tmp_path / "cache", root_dir=tmp_path / "images")
    recipe = ImageRecipe()
    store.rootfs(recipe).mkdir(parents=True)
    assert not store.unpacked(recipe)
    store.marker(recipe).write_text("x\n")
    assert store.unpacked(recipe)


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_deb822_sources() -> None:
    assert mirror_from_sources(DEB822) == "http://mirror.example/debian"
    assert mirror_from_sources(DEB822.replace("bookworm bookworm-updates", "trixie")) is None
    assert mirror_from_sources("Types: deb-src\nURIs: http://x/\nSuites: bookworm\n") is None


def test_mirror_from_sources_list() -> None:
    text = "# comment\ndeb [arch=amd64] http://m.example/debian bookworm main\ndeb http://s/ bookworm-security main\n"
    assert mirror_from_list(text) == "http://m.example/debian"
    assert mirror_from_list("deb-src http://m/ bookworm main\n") is None


def test_argv_builders() -> None:
    argv = debootstrap_argv(ImageRecipe(packages=("systemd", "dbus")), Path("/t"), "http://m/debian")
    assert argv == ["debootstrap", "--variant=minbase", "--include=systemd,dbus", "bookworm", "/t", "http://m/debian"]
    argv = nspawn_argv(Path("/h/merged"), "dev-app-1", "orch-dev")
    assert argv[:3] == ["systemd-nspawn", "-D", "/h/merged"]
    for flag in ("--boot", "--machine=dev-app-1", "--network-bridge=orch-dev", "--register=no", "--keep-unit",
                 "--console=passive"):
        assert flag in argv


def test_network_file_has_static_address_and_no_waiting() -> None:
    text = network_file("10.213.10.11", 24)
    assert "Name=host0" in text
    assert "Address=10.213.10.11/24" in text
    assert "DHCP" not in text
    assert "LinkLocalAddressing=no" in text


def test_known_hosts_entries_are_removed_by_address_only() -> None:
    text = (
        "10.1.1.10 ssh-ed25519 AAAA1\n"
        "10.1.1.11 ssh-ed25519 AAAA2\n"
        "10.1.1.100,name ssh-ed25519 AAAA3\n"
        "[10.1.1.10]:2222 ssh-ed25519 AAAA4\n"
    )
    kept = known_hosts_without(text, ["10.1.1.10"])
    assert kept == "10.1.1.11 ssh-ed25519 AAAA2\n10.1.1.100,name ssh-ed25519 AAAA3\n"
    assert known_hosts_without(text, []) == text


def test_terraform_host_from_json() -> None:
    spec = {"name": "dev-app-1", "address": "10.213.10.10", "groups": ["app"], "bridge": "orch-dev",
            "subnet": "10.213.10.0/24", "state_dir": "/p/.orchestrate/dev/hosts", "project_dir": "/p",
            "python": "/p/.venv/bin/python"}
    host = TerraformHost.from_json(json.dumps(spec))
    assert host.spec() == HostSpec("dev-app-1", "10.213.10.10", ("app",))
    fleet = host.fleet()
    assert fleet.known_hosts == Path("/p/.orchestrate/dev/known_hosts")
    assert fleet.host_dir("dev-app-1") == Path("/p/.orchestrate/dev/hosts/dev-app-1")
    with pytest.raises(HostError, match="bad host description"):
        TerraformHost.from_json('{"name": "x"}')
    with pytest.raises(HostError, match="bad host description"):
        TerraformHost.from_json("not json")


def test_outputs_in_every_shape_give_the_hosts() -> None:
    hosts = [{"name": "a", "address": "10.0.0.10", "groups": ["app"]}]
    assert _hosts_from_outputs({"hosts": hosts, "ssh_user": "root"}) == hosts
    assert _hosts_from_outputs({"hosts": {"value": hosts, "type": "list"}}) == hosts
    assert _hosts_from_outputs(hosts) == hosts
    with pytest.raises(HostError):
        _hosts_from_outputs({"hosts": 3})


def test_prune_keeps_the_current_image_and_removes_unused_ones(tmp_path: Path) -> None:
    store = ImageStore(cache_dir=tmp_path / "cache", root_dir=tmp_path / "images")
    current = ImageRecipe()
    old = "deadbeefdeadbeef"
    for digest in (current.hash, old):
        (store.root_dir / digest / "rootfs").mkdir(parents=True)
        store.cache_dir.mkdir(exist_ok=True)
        (store.cache_dir / f"{digest}.tar").write_bytes(b"x")
        (store.cache_dir / f"{digest}.tar.sha256").write_text("y\n")
    assert prune_images(store, current) == [old]
    assert sorted(p.name for p in store.cache_dir.iterdir()) == [f"{current.hash}.tar", f"{current.hash}.tar.sha256"]
    assert [p.name for p in store.root_dir.iterdir() if p.is_dir()] == [current.hash]
