"""Loading and running roles/rust_service's modules outside Ansible.

The role's modules import its module_utils as `ansible.module_utils.<name>` (the path AnsiballZ
gives them on a host). Here those files are loaded under the same names, so the modules can be
imported as they are, or run as Ansible runs them (`python module.py ARGS_FILE`).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.support.project import load_file_module

ROLE = Path(__file__).resolve().parents[3] / "roles" / "rust_service"
LIBRARY = ROLE / "library"
MODULE_UTILS = ROLE / "module_utils"
FILTER_PLUGINS = ROLE / "filter_plugins"


@functools.cache
def load_module_utils() -> dict[str, ModuleType]:
    """Every file of the role's module_utils, importable as `ansible.module_utils.<name>` (loaded
    once, so that a module's exceptions are the classes the tests catch)."""
    return {path.stem: load_file_module(path, f"ansible.module_utils.{path.stem}")
            for path in sorted(MODULE_UTILS.glob("*.py"))}


def load_role_module(name: str) -> ModuleType:
    """roles/rust_service/library/<name>.py, with its module_utils importable."""
    load_module_utils()
    return load_file_module(LIBRARY / f"{name}.py", name)


# `python -c BOOTSTRAP MODULE ARGS_FILE`: the module as Ansible runs it, module_utils included
_BOOTSTRAP = """
import importlib.util, pathlib, runpy, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.py")):
    spec = importlib.util.spec_from_file_location("ansible.module_utils." + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
module_path = sys.argv[2]
sys.argv = [module_path, sys.argv[3]]
runpy.run_path(module_path, run_name="__main__")
"""


def run_role_module(name: str, args: dict[str, object], workdir: Path, *,
                    check_mode: bool = False) -> dict[str, object]:
    """Run library/<name>.py with `args` in a new process; return its JSON result."""
    args_file = workdir / f".{name}.args.json"
    payload = dict(args)
    if check_mode:
        payload["_ansible_check_mode"] = True
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    try:
        proc = subprocess.run([sys.executable, "-c", _BOOTSTRAP, str(MODULE_UTILS), str(LIBRARY / f"{name}.py"),
                               str(args_file)], capture_output=True, text=True, timeout=120, check=False)
    finally:
        args_file.unlink()
    try:
        result: dict[str, object] = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"{name} printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None
    return result
