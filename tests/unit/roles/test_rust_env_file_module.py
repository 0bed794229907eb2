"""roles/rust_service/library/rust_env_file.py: rendering, and a real module run on a tmp dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.project import load_file_module

MODULE_PATH = Path(__file__).resolve().parents[3] / "roles" / "rust_service" / "library" / "rust_env_file.py"


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    return load_file_module(MODULE_PATH, "rust_env_file")


def test_renders_what_the_env_template_rendered(mod: ModuleType) -> None:
    # the exact bytes the former env.j2 template produced for the same input (checked with
    # ansible.builtin.template), so hosts deployed before see no change and no restart
    env = {"HELLO_GREETING": 'hi "there" \\ x', "B": True, "F": 1.5, "I": 3, "S": "sec"}
    expected = '#\n# Ansible managed\n#\nB="true"\nF="1.5"\nHELLO_GREETING="hi \\"there\\" \\\\ x"\nI="3"\nS="sec"\n'
    assert mod.render(env, "#\n# Ansible managed\n#") == expected
    assert mod.render({}, "") == ""
    assert mod.render({"A": False}, "") == 'A="false"\n'


def run_module(args: dict[str, object]) -> dict[str, object]:
    """Run the module as Ansible does without a controller: `python module.py ARGS_FILE`."""
    args_file = Path(str(args["path"]) + ".args")
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    try:
        proc = subprocess.run([sys.executable, str(MODULE_PATH), str(args_file)], capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        args_file.unlink()
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_writes_0600_reports_changes_and_never_returns_the_values(tmp_path: Path) -> None:
    path = tmp_path / "hello.env"
    args: dict[str, object] = {"path": str(path), "env": {"HELLO_SECRET": "s3cret-value"}, "header": "# managed",
                               "mode": "0600"}
    first = run_module(args)
    assert first["changed"] is True, first
    assert path.read_text() == '# managed\nHELLO_SECRET="s3cret-value"\n'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "s3cret-value" not in json.dumps(first)
    assert [p.name for p in tmp_path.iterdir()] == ["hello.env"], "no temporary file is left"

    assert run_module(args)["changed"] is False, "the same content again is a no-op"
    os.chmod(path, 0o644)
    assert run_module(args)["changed"] is True, "a loosened mode is put back"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    changed = run_module({**args, "env": {"HELLO_SECRET": "other"}})
    assert changed["changed"] is True and path.read_text().endswith('HELLO_SECRET="other"\n')
