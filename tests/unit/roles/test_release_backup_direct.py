"""roles/release_backup/library/release_backup.py without Ansible (`run_direct`, what `orchestrate`
runs on a host for a backup on the tuned path): the same backup as the module's Ansible run, its
parameters checked, nothing but state=backup; and the controller's parameters for it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator.config.loader import Project
from orchestrator.release.backup import host_params, role_vars
from tests.support.project import REPO, load_file_module

MODULE_PATH = Path(__file__).resolve().parents[3] / "roles" / "release_backup" / "library" / "release_backup.py"
BACKUP_ID = "20261123T181500Z"


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    return load_file_module(MODULE_PATH, "release_backup_direct")


def _service(tmp_path: Path) -> dict[str, Any]:
    data, app, etc = tmp_path / "data", tmp_path / "opt", tmp_path / "etc"
    data.mkdir()
    (data / "ledger.db").write_bytes(b"rows\n")
    (app / "releases" / "0.2.0-abc").mkdir(parents=True)
    (app / "current").symlink_to("releases/0.2.0-abc")
    etc.mkdir()
    (etc / "svc.env").write_text("TOKEN=s3cret\n")
    return {"state": "backup", "service": "svc", "backup_id": BACKUP_ID, "backups_dir": str(tmp_path / "backups"),
            "data_dir": str(data), "app_dir": str(app), "env_file": str(etc / "svc.env"), "keep": 2}


def test_a_direct_backup_writes_the_backup_and_answers_like_the_module(mod: ModuleType, tmp_path: Path) -> None:
    params = _service(tmp_path)
    result = mod.run_direct(params)
    assert not result.get("failed") and result["changed"] is True, result
    backup = tmp_path / "backups" / BACKUP_ID
    assert result["backup_dir"] == str(backup) and result["release_id"] == "0.2.0-abc"
    assert sorted(p.name for p in backup.iterdir()) == ["MANIFEST.sha256", "config.env", "data.tar.gz", "release-id"]
    assert (backup / "release-id").read_text() == "0.2.0-abc\n"
    assert (backup / "config.env").stat().st_mode & 0o777 == 0o600
    digest = hashlib.sha256((backup / "data.tar.gz").read_bytes()).hexdigest()
    assert result["files"]["data.tar.gz"] == {"sha256": digest, "size": (backup / "data.tar.gz").stat().st_size}
    assert mod.verify_dir(str(backup)) == []

    again = mod.run_direct(params)  # the same id twice: refused, the first one kept
    assert again["failed"] and "already exists" in again["msg"]
    assert (backup / "release-id").read_text() == "0.2.0-abc\n"


def test_bad_parameters_and_other_states_are_refused_before_any_work(mod: ModuleType, tmp_path: Path) -> None:
    params = _service(tmp_path)
    cases = [
        ({**params, "keep": "2"}, "keep: expected int"),
        ({**params, "keep": True}, "keep: expected int"),
        ({**params, "shell": "rm -rf /"}, "unsupported parameters: shell"),
        ({k: v for k, v in params.items() if k != "data_dir"}, "missing required parameter: data_dir"),
        ({**params, "state": "wipe"}, "state: must be one of backup, verify, restore"),
        ({**params, "state": "restore"}, "state=restore runs through Ansible only"),
        ({**params, "backup_id": "latest"}, "is not like 20261123T181500Z"),
        ({**params, "keep": 0}, "keep must be at least 1"),
    ]
    for given, message in cases:
        result = mod.run_direct(given)
        assert result["failed"] and message in result["msg"], (given, result)
    assert mod.run_direct(params, check_mode=True)["msg"] == "check mode is not supported"
    assert not (tmp_path / "backups").exists()


def test_the_controller_passes_the_roles_defaults() -> None:
    loaded = Project(REPO).load("dev")
    params = host_params(role_vars(loaded, BACKUP_ID, keep=3))
    assert params == {"state": "backup", "service": "hello", "backup_id": BACKUP_ID,
                      "backups_dir": "/var/backups/hello", "data_dir": "/var/lib/hello", "app_dir": "/opt/hello",
                      "env_file": "/etc/hello/hello.env", "keep": 3}
    defaults = (MODULE_PATH.parents[1] / "defaults" / "main.yml").read_text()
    for line in ('release_backup_dir: "/var/backups/{{ release_backup_service }}"',
                 'release_backup_app_dir: "/opt/{{ release_backup_service }}"',
                 'release_backup_env_file: "/etc/{{ release_backup_service }}/{{ release_backup_service }}.env"'):
        assert line in defaults  # the role's defaults host_params mirrors
