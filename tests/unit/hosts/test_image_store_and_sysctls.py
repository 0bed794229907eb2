"""ImageStore.ensure rebuilds exactly when it must; the inotify sysctls are only ever raised.

The expensive step (debootstrap + prepare + pack, `ImageStore._build`) is replaced by a fake
that packs a tiny rootfs, so these run in milliseconds; tar and the sha256 sidecar are real.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from orchestrator.fleet.local.image import RECIPE, ImageRecipe, ImageStore
from orchestrator.fleet.local.network import (
    INOTIFY_HOST_THRESHOLD,
    INOTIFY_LIMITS,
    raise_inotify_limits,
    raise_inotify_limits_for,
)

MIRROR = "http://mirror.invalid/debian"  # never contacted: the build is faked


def _pack(store: ImageStore, recipe: ImageRecipe, content: str) -> None:
    """Write a valid cached tarball (one file: etc/os-release) and its sidecar, like `_build`."""
    tree = store.root_dir / "src" / recipe.hash
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "os-release").write_text(content)
    store.cache_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(store.tarball(recipe), "w") as tar:
        tar.add(tree, arcname=".")
    digest = hashlib.sha256(store.tarball(recipe).read_bytes()).hexdigest()
    store.sidecar(recipe).write_text(f"{digest}  {store.tarball(recipe).name}\n")


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the expensive build with a fake that records the recipe hashes it built."""
    built: list[str] = []

    def fake_build(self: ImageStore, recipe: ImageRecipe, mirror: str) -> None:
        assert mirror == MIRROR
        built.append(recipe.hash)
        _pack(self, recipe, f"ID=debian\nBUILD={len(built)}\n")

    monkeypatch.setattr(ImageStore, "_build", fake_build)
    return built


def _store(tmp_path: Path) -> ImageStore:
    return ImageStore(cache_dir=tmp_path / "cache", root_dir=tmp_path / "images")


def test_a_good_cache_is_unpacked_without_building(tmp_path: Path, builds: list[str]) -> None:
    store, recipe = _store(tmp_path), ImageRecipe()
    _pack(store, recipe, "ID=debian\nBUILD=cached\n")
    rootfs = store.ensure(recipe, mirror=MIRROR)
    assert builds == []
    assert (rootfs / "etc" / "os-release").read_text() == "ID=debian\nBUILD=cached\n"
    # unpacked and marked: a second ensure neither builds nor unpacks again
    (rootfs / "etc" / "touched").write_text("x")
    assert store.ensure(recipe, mirror=MIRROR) == rootfs
    assert builds == [] and (rootfs / "etc" / "touched").exists()


def test_no_cache_builds_once(tmp_path: Path, builds: list[str]) -> None:
    store, recipe = _store(tmp_path), ImageRecipe()
    rootfs = store.ensure(recipe, mirror=MIRROR)
    assert builds == [recipe.hash]
    assert (rootfs / "etc" / "os-release").read_text() == "ID=debian\nBUILD=1\n"
    store.ensure(recipe, mirror=MIRROR)
    assert builds == [recipe.hash]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no sidecar", "empty sidecar"])
def test_a_corrupt_or_partial_cache_is_rebuilt(tmp_path: Path, builds: list[str], damage: str) -> None:
    store, recipe = _store(tmp_path), ImageRecipe()
    _pack(store, recipe, "ID=debian\nBUILD=stale\n")
    tarball = store.tarball(recipe)
    if damage == "flipped byte":
        data = bytearray(tarball.read_bytes())
        data[600] ^= 0xFF
        tarball.write_bytes(bytes(data))
    elif damage == "truncated":  # a copy or pack that was interrupted
        tarball.write_bytes(tarball.read_bytes()[:1024])
    elif damage == "no sidecar":  # killed before the sidecar (written last) was written
        store.sidecar(recipe).unlink()
    else:
        store.sidecar(recipe).write_text("")
    rootfs = store.ensure(recipe, mirror=MIRROR)
    assert builds == [recipe.hash]
    assert (rootfs / "etc" / "os-release").read_text() == "ID=debian\nBUILD=1\n"
    assert store.cache_valid(recipe)


def test_an_unpack_without_its_marker_is_redone_from_the_cache(tmp_path: Path, builds: list[str]) -> None:
    store, recipe = _store(tmp_path), ImageRecipe()
    _pack(store, recipe, "ID=debian\nBUILD=cached\n")
    rootfs = store.ensure(recipe, mirror=MIRROR)
    store.marker(recipe).unlink()  # an unpack that was interrupted
    (rootfs / "etc" / "os-release").write_text("half")
    assert store.ensure(recipe, mirror=MIRROR) == rootfs
    assert builds == []
    assert (rootfs / "etc" / "os-release").read_text() == "ID=debian\nBUILD=cached\n"


def test_a_changed_recipe_builds_a_new_image_beside_the_old_one(tmp_path: Path, builds: list[str]) -> None:
    store = _store(tmp_path)
    old, new = ImageRecipe(), ImageRecipe(packages=(*RECIPE, "strace"))
    assert old.hash != new.hash
    _pack(store, old, "ID=debian\nBUILD=old\n")
    old_rootfs = store.ensure(old, mirror=MIRROR)
    new_rootfs = store.ensure(new, mirror=MIRROR)
    assert builds == [new.hash]
    assert new_rootfs != old_rootfs and new_rootfs == store.rootfs(new)
    assert (new_rootfs / "etc" / "os-release").read_text() == "ID=debian\nBUILD=1\n"
    # the old image is untouched (hosts running on it keep their lowerdir)
    assert (old_rootfs / "etc" / "os-release").read_text() == "ID=debian\nBUILD=old\n"
    assert store.cache_valid(old) and store.cache_valid(new)


# --- inotify sysctls ------------------------------------------------------------------------


def _sysctls(tmp_path: Path, **values: int) -> Path:
    directory = tmp_path / "proc-sys-fs-inotify"
    directory.mkdir()
    for name, value in values.items():
        (directory / name).write_text(f"{value}\n")
    return directory


def _read(directory: Path) -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in sorted(directory.iterdir())}


def test_low_limits_are_raised(tmp_path: Path) -> None:
    sysctl = _sysctls(tmp_path, max_user_instances=128, max_user_watches=8192)
    assert raise_inotify_limits(sysctl) == INOTIFY_LIMITS
    assert _read(sysctl) == INOTIFY_LIMITS


def test_higher_limits_are_never_lowered(tmp_path: Path) -> None:
    high = INOTIFY_LIMITS["max_user_watches"] * 4
    sysctl = _sysctls(tmp_path, max_user_instances=128, max_user_watches=high)
    assert raise_inotify_limits(sysctl) == {"max_user_instances": INOTIFY_LIMITS["max_user_instances"]}
    assert _read(sysctl) == {"max_user_instances": INOTIFY_LIMITS["max_user_instances"], "max_user_watches": high}
    assert raise_inotify_limits(sysctl) == {}  # already high enough: nothing written


def test_limits_are_only_touched_beyond_the_threshold(tmp_path: Path) -> None:
    sysctl = _sysctls(tmp_path, max_user_instances=128, max_user_watches=8192)
    assert raise_inotify_limits_for(INOTIFY_HOST_THRESHOLD, sysctl) == {}
    assert _read(sysctl) == {"max_user_instances": 128, "max_user_watches": 8192}
    assert raise_inotify_limits_for(INOTIFY_HOST_THRESHOLD + 1, sysctl) == INOTIFY_LIMITS
    assert _read(sysctl) == INOTIFY_LIMITS


def test_an_unwritable_limit_is_left_alone(tmp_path: Path) -> None:
    sysctl = _sysctls(tmp_path, max_user_instances=128)  # max_user_watches missing: not readable
    assert raise_inotify_limits(sysctl) == {"max_user_instances": INOTIFY_LIMITS["max_user_instances"]}
    assert _read(sysctl) == {"max_user_instances": INOTIFY_LIMITS["max_user_instances"]}
