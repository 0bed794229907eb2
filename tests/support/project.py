"""The repository as the tests see it: where it is, and copies of its project files to change freely."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[2]
#: Terraform plan fixtures (a plan JSON and the terraform_data-only root it was made from)
PLANS = REPO / "tests" / "fixtures" / "plans"
#: project directories a copied project needs (the code comes from the venv)
PROJECT_PARTS = ("inventories", "terraform", "roles", "playbooks", "molecule")
#: never copied: Terraform's working files and generated state
IGNORED = (".terraform", "*.tfstate*", ".orchestrate")


def copy_project(dest: Path, parts: Sequence[str] = PROJECT_PARTS) -> Path:
    """Copy the project's own files (`parts` of the repository, no generated state) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in parts:
        source = REPO / part
        if source.exists():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns(*IGNORED))
    return dest


def load_file_module(path: Path, name: str) -> ModuleType:
    """Import a Python file that is not on the package path (a role's module, a host-side helper)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module


def local_playbook_project(root: Path, name: str, playbook_text: str) -> tuple[Path, Path, Path]:
    """A project dir under `root` with an empty roles/, the playbook `name` and an inventory of one
    host reached by Ansible's local connection (this Python): (project, playbook, inventory)."""
    project = root / "project"
    (project / "roles").mkdir(parents=True)
    playbook = project / name
    playbook.write_text(playbook_text)
    inventory = project / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    return project, playbook, inventory
