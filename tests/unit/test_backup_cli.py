"""The backup, backups and restore verbs at the CLI boundary (no hosts: what they refuse)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner, Result

from orchestrator.cli import cli


def invoke(project: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--project-dir", str(project), *args])


def test_backups_lists_the_controller_copies_newest_first(project_copy: Path) -> None:
    for backup_id in ("20261101T000000Z", "20261102T000000Z"):
        host_dir = project_copy / ".orchestrate" / "dev" / "backups" / backup_id / "dev-app-1"
        host_dir.mkdir(parents=True)
        (host_dir / "data.tar.gz").write_bytes(b"x" * 2048)
        (host_dir / "release-id").write_text("1.0.0-0123456789ab\n")
        (host_dir / "MANIFEST.sha256").write_text(f"{hashlib.sha256(b'x' * 2048).hexdigest()}  data.tar.gz\n")
    result = invoke(project_copy, "backups", "dev", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [b["id"] for b in payload["backups"]] == ["20261102T000000Z", "20261101T000000Z"]
    assert payload["backups"][0]["hosts"] == [{"host": "dev-app-1", "release_id": "1.0.0-0123456789ab",
                                               "size": 2048, "sha256": hashlib.sha256(b"x" * 2048).hexdigest()}]
    human = invoke(project_copy, "backups", "dev")
    assert "20261102T000000Z" in human.stdout and "2.0 KiB" in human.stdout


def test_restore_without_yes_and_without_terminal_is_exit_2(project_copy: Path) -> None:
    result = invoke(project_copy, "restore", "dev", "20261101T000000Z")
    assert result.exit_code == 2
    assert "pass --yes" in result.stderr


def test_restore_of_a_malformed_id_is_exit_2(project_copy: Path) -> None:
    result = invoke(project_copy, "restore", "dev", "latest", "--yes")
    assert result.exit_code == 2
    assert "is not a backup id such as 20261123T181500Z" in result.stderr


def test_backup_without_inventory_is_exit_2_and_says_what_to_do(project_copy: Path) -> None:
    result = invoke(project_copy, "backup", "dev", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout.splitlines()[-1])["exit_code"] == 2
    assert "orchestrate up dev" in result.stderr
