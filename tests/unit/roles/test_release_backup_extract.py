"""roles/release_backup/library/release_backup.py: a restore extracts with tarfile's `data` filter
semantics (checked member by member, since Debian 12's Python has no `filter=`), so a crafted
archive writes nothing outside the data dir; and the controller refuses such an archive before
sending it anywhere (orchestrator.release.backup.archive_problems)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.release.backup import archive_problems
from tests.support.project import load_file_module

MODULE_PATH = Path(__file__).resolve().parents[3] / "roles" / "release_backup" / "library" / "release_backup.py"
BACKUP_ID = "20261123T181500Z"

Member = Callable[[tarfile.TarFile], None]


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    return load_file_module(MODULE_PATH, "release_backup")


def symlink(name: str, target: str) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)
    return add


def hardlink(name: str, target: str) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.LNKTYPE, target
        tar.addfile(info)
    return add


def file(name: str, data: bytes = b"planted\n", mode: int = 0o644) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    return add


def directory(name: str) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    return add


def device(name: str) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(info)
    return add


def archive(path: Path, *members: Member) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for add in members:
            add(tar)
    return path


#: where an absolute member would land if it were extracted
ABSOLUTE = "/tmp/orchestrate-unit-test-escaped"

#: the reported chain: `b -> .` passes, `b/c` then lands at `c` and points one level up
CHAIN = (directory("."), symlink("./b", "."), symlink("./b/c", ".."), file("./c/escaped"))

UNSAFE = {
    "symlink chain": CHAIN,
    "absolute name": (file(ABSOLUTE),),
    "dot-dot name": (file("./sub/../../escaped"),),
    "link outside": (symlink("./up", ".."),),
    "absolute link": (symlink("./etc", "/etc"),),
    "write through an inside link": (directory("./real"), symlink("./alias", "real"), file("./alias/x")),
    "hard link outside": (hardlink("./shadow", "../../etc/shadow"),),
    "device": (device("./null"),),
    "replaced by a link": (file("./a"), symlink("./a", "b")),
}


@pytest.mark.parametrize("members", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_archives_extract_nothing_outside(mod: ModuleType, tmp_path: Path, members: tuple[Member, ...]) -> None:
    staging = tmp_path / "var" / "lib" / "hello.restore"
    staging.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*") if p != staging)
    with tarfile.open(archive(tmp_path / "data.tar.gz", *members)) as tar, pytest.raises(ValueError):
        mod.extract_checked(tar, str(staging))
    (tmp_path / "data.tar.gz").unlink()
    outside = sorted(p for p in tmp_path.rglob("*") if p != staging and staging not in p.parents)
    assert outside == [p for p in before if p.name != "data.tar.gz"]
    assert not Path(ABSOLUTE).exists()


@pytest.mark.parametrize("members", UNSAFE.values(), ids=UNSAFE.keys())
def test_the_controller_refuses_the_same_archives(tmp_path: Path, members: tuple[Member, ...]) -> None:
    assert archive_problems(archive(tmp_path / "data.tar.gz", *members))


def test_a_normal_data_dir_round_trips(mod: ModuleType, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "counter").write_text("41\n")
    (data / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (data / "sub" / "run.sh").chmod(0o4777)  # setuid and world-writable: cleared on restore
    (data / "latest").symlink_to("sub/run.sh")
    (data / "hard").hardlink_to(data / "counter")
    mod.write_archive(str(data), str(tmp_path / "data.tar.gz"))  # what a backup writes
    assert archive_problems(tmp_path / "data.tar.gz") == []
    staging = tmp_path / "restored"
    staging.mkdir()
    with tarfile.open(tmp_path / "data.tar.gz") as tar:
        mod.extract_checked(tar, str(staging))
    assert (staging / "counter").read_text() == "41\n"
    assert (staging / "latest").readlink() == Path("sub/run.sh")
    assert (staging / "hard").stat().st_ino == (staging / "counter").stat().st_ino
    assert (staging / "sub" / "run.sh").stat().st_mode & 0o7777 == 0o755


def test_the_module_refuses_a_crafted_backup_and_changes_nothing(tmp_path: Path) -> None:
    """The whole restore as Ansible runs it: the chain archive in a backup whose manifest matches."""
    data = tmp_path / "var" / "lib" / "hello"
    data.mkdir(parents=True)
    (data / "counter").write_text("41\n")
    app = tmp_path / "opt" / "hello"
    (app / "releases").mkdir(parents=True)
    backup = tmp_path / "var" / "backups" / "hello" / BACKUP_ID
    backup.mkdir(parents=True)
    archive(backup / "data.tar.gz", *CHAIN)
    (backup / "release-id").write_text("none\n")
    manifest = subprocess.run(["sha256sum", "data.tar.gz", "release-id"], cwd=backup, capture_output=True,
                              text=True, check=True).stdout
    (backup / "MANIFEST.sha256").write_text(manifest)
    args = {"state": "restore", "backup_id": BACKUP_ID, "service": "hello", "backups_dir": str(backup.parent),
            "data_dir": str(data), "app_dir": str(app), "env_file": str(tmp_path / "hello.env"),
            "health_url": "http://127.0.0.1:9/healthz"}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(MODULE_PATH), str(args_file)], capture_output=True, text=True,
                          timeout=60, check=False)
    result = json.loads(proc.stdout)
    assert not (tmp_path / "var" / "lib" / "escaped").exists()  # where the chain's file used to land
    assert proc.returncode != 0 and result["failed"], result
    assert "goes through the symlink" in result["msg"] and "nothing was changed" in result["msg"]
    assert sorted(p.name for p in (tmp_path / "var" / "lib").iterdir()) == ["hello"]  # staging removed
    assert (data / "counter").read_text() == "41\n"
