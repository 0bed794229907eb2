"""roles/rust_service/library/rust_env_file.py: a real module run on a tmp dir.

The rendering itself is tested in test_rust_service_envfile.py (module_utils).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.unit.roles.helpers import run_role_module


def run_module(args: dict[str, object], check_mode: bool = False) -> dict[str, object]:
    """Run the module as Ansible does without a controller: `python module.py ARGS_FILE`."""
    return run_role_module("rust_env_file", args, Path(str(args["path"])).parent, check_mode=check_mode)


def test_writes_0600_reports_changes_and_never_returns_the_values(tmp_path: Path) -> None:
    path = tmp_path / "hello.env"
    args: dict[str, object] = {"path": str(path), "env": {"HELLO_SECRET": "s3cret-value"}, "header": "# managed",
                               "mode": "0600"}
    first = run_module(args)
    assert first["changed"] is True, first
    assert first["keys_changed"] == ["HELLO_SECRET"]
    assert path.read_text() == '# managed\nHELLO_SECRET="s3cret-value"\n'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "s3cret-value" not in json.dumps(first)
    assert [p.name for p in tmp_path.iterdir()] == ["hello.env"], "no temporary file is left"

    again = run_module(args)
    assert again["changed"] is False and again["keys_changed"] == [], "the same content again is a no-op"
    os.chmod(path, 0o644)
    assert run_module(args)["changed"] is True, "a loosened mode is put back"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    changed = run_module({**args, "env": {"HELLO_SECRET": "other"}})
    assert changed["changed"] is True and path.read_text().endswith('HELLO_SECRET="other"\n')


def test_check_mode_reports_the_changed_keys_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hello.env"
    args: dict[str, object] = {"path": str(path), "env": {"A": "1", "B": "keep"}, "mode": "0600"}
    new = run_module(args, check_mode=True)
    assert new["changed"] is True and new["keys_changed"] == ["A", "B"]
    assert not path.exists(), "check mode writes nothing"
    run_module(args)
    before = path.read_bytes()
    changed = run_module({**args, "env": {"A": "2", "B": "keep", "C": "secret-value"}}, check_mode=True)
    assert changed["changed"] is True and changed["keys_changed"] == ["A", "C"]
    assert "secret-value" not in json.dumps(changed)
    assert path.read_bytes() == before


def test_a_value_with_a_newline_fails_naming_the_key_not_the_value(tmp_path: Path) -> None:
    path = tmp_path / "hello.env"
    result = run_module({"path": str(path), "env": {"API_TOKEN": "abc\ndef-secret"}, "mode": "0600"})
    assert result.get("failed") is True
    assert "API_TOKEN" in str(result["msg"])
    assert "def-secret" not in json.dumps(result)
    assert not path.exists()
