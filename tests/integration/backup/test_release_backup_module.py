"""roles/release_backup/library/release_backup.py run for real on local directories (no hosts).

The module is run the way Ansible runs it (a JSON args file), against a data dir, an app dir
with a `current` symlink and an env file made in tmp_path. Restore needs systemd, so it is
covered by the host tests; backup, manifest, retention and verify are covered here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

MODULE = Path(__file__).resolve().parents[3] / "roles" / "release_backup" / "library" / "release_backup.py"

pytestmark = pytest.mark.integration


def run_module(tmp_path: Path, **args: Any) -> tuple[int, dict[str, Any]]:
    args_file = tmp_path / f"args-{args['state']}-{args['backup_id']}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(MODULE), str(args_file)], capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Any]:
    data = tmp_path / "var/lib/hello"
    (data / "sub").mkdir(parents=True)
    (data / "counter").write_text("41\n")
    (data / "sub" / "blob.bin").write_bytes(os.urandom(4096))
    app = tmp_path / "opt/hello"
    (app / "releases" / "1.0.0-0123456789ab").mkdir(parents=True)
    (app / "current").symlink_to("releases/1.0.0-0123456789ab")
    env_file = tmp_path / "etc/hello/hello.env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text("HELLO_SECRET=top\n")
    env_file.chmod(0o600)
    return {"service": "hello", "backups_dir": str(tmp_path / "var/backups/hello"), "data_dir": str(data),
            "app_dir": str(app), "env_file": str(env_file)}


def test_backup_writes_archive_release_config_and_manifest(tmp_path: Path, layout: dict[str, Any]) -> None:
    rc, result = run_module(tmp_path, state="backup", backup_id="20261123T181500Z", keep=5, **layout)
    assert rc == 0, result
    backup_dir = Path(result["backup_dir"])
    assert sorted(p.name for p in backup_dir.iterdir()) == ["MANIFEST.sha256", "config.env", "data.tar.gz",
                                                            "release-id"]
    assert (backup_dir / "release-id").read_text() == "1.0.0-0123456789ab\n"
    assert oct(os.stat(backup_dir / "config.env").st_mode & 0o777) == "0o600"
    manifest = dict(reversed(line.split("  ")) for line in (backup_dir / "MANIFEST.sha256").read_text().splitlines())
    for name, digest in manifest.items():
        assert hashlib.sha256((backup_dir / name).read_bytes()).hexdigest() == digest
    assert set(manifest) == {"config.env", "data.tar.gz", "release-id"}
    with tarfile.open(backup_dir / "data.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"./counter", "./sub/blob.bin"} <= names
    assert result["files"]["data.tar.gz"]["size"] == (backup_dir / "data.tar.gz").stat().st_size


def test_no_current_release_is_recorded_as_none(tmp_path: Path, layout: dict[str, Any]) -> None:
    Path(layout["app_dir"], "current").unlink()
    rc, result = run_module(tmp_path, state="backup", backup_id="20261123T181500Z", **layout)
    assert rc == 0 and result["release_id"] == "none"


def test_retention_keeps_the_newest_on_the_host(tmp_path: Path, layout: dict[str, Any]) -> None:
    ids = [f"202611{day:02d}T000000Z" for day in range(1, 5)]
    for backup_id in ids:
        rc, result = run_module(tmp_path, state="backup", backup_id=backup_id, keep=2, **layout)
        assert rc == 0, result
    assert result["removed"] == [ids[1]]
    assert sorted(os.listdir(layout["backups_dir"])) == ids[2:]


def test_verify_refuses_a_flipped_byte_naming_the_file(tmp_path: Path, layout: dict[str, Any]) -> None:
    rc, result = run_module(tmp_path, state="backup", backup_id="20261123T181500Z", **layout)
    assert rc == 0
    rc, ok = run_module(tmp_path, state="verify", backup_id="20261123T181500Z", **layout)
    assert rc == 0 and not ok.get("failed")
    archive = Path(result["backup_dir"]) / "data.tar.gz"
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF
    archive.write_bytes(bytes(data))
    rc, bad = run_module(tmp_path, state="verify", backup_id="20261123T181500Z", **layout)
    assert rc != 0 and bad["failed"]
    assert "is corrupt" in bad["msg"] and "data.tar.gz: sha256 differs" in bad["msg"]


def test_restore_of_a_corrupt_backup_changes_nothing(tmp_path: Path, layout: dict[str, Any]) -> None:
    rc, result = run_module(tmp_path, state="backup", backup_id="20261123T181500Z", **layout)
    assert rc == 0
    (Path(result["backup_dir"]) / "release-id").write_text("9.9.9-0123456789ab\n")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "args-" not in p.name)
    counter = Path(layout["data_dir"], "counter").read_text()
    rc, bad = run_module(tmp_path, state="restore", backup_id="20261123T181500Z",
                         health_url="http://127.0.0.1:9/healthz", **layout)
    assert rc != 0 and "release-id: sha256 differs" in bad["msg"] and "nothing was changed" in bad["msg"]
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "args-" not in p.name)
    assert after == before
    assert Path(layout["data_dir"], "counter").read_text() == counter


def test_a_host_without_data_dir_gets_an_empty_archive(tmp_path: Path, layout: dict[str, Any]) -> None:
    shutil.rmtree(layout["data_dir"])
    Path(layout["env_file"]).unlink()
    rc, result = run_module(tmp_path, state="backup", backup_id="20261123T181500Z", **layout)
    assert rc == 0, result
    with tarfile.open(Path(result["backup_dir"]) / "data.tar.gz") as archive:
        assert archive.getmembers() == []
    assert sorted(result["files"]) == ["MANIFEST.sha256", "data.tar.gz", "release-id"]
