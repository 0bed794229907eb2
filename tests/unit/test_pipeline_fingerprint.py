"""The fingerprint that decides whether `up` is a no-op: each input it covers turns the no-op off."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.fleet.render import render_environment
from orchestrator.pipeline.fingerprint import (
    _recorded_fingerprint,
    fingerprint,
    last_completed_up,
    noop_details,
    operator_skipped_gates,
)
from orchestrator.runs.journal import Journal

RELEASE = "0.1.0-aaaaaaaaaaaa"


def rendered(project: Path) -> LoadedEnvironment:
    loaded = Project(project).load("dev")
    render_environment(loaded)  # what `up` does before it compares
    return loaded


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def edit_env(project: Path, pattern: str, replacement: str) -> None:
    path = project / "inventories/dev/environment.yml"
    text, count = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.MULTILINE)
    assert count == 1, pattern
    path.write_text(text)


CHANGES: dict[str, Callable[[Path], None]] = {
    "role task file": lambda p: append(p / "roles/rust_service/tasks/main.yml", "\n# changed\n"),
    "role module": lambda p: append(p / "roles/rust_service/library/rust_release.py", "\n# changed\n"),
    "role defaults": lambda p: append(p / "roles/rust_service/defaults/main.yml", "\n# changed\n"),
    "new role file": lambda p: (p / "roles/rust_service/templates/extra.j2").write_text("x\n"),
    "playbook": lambda p: append(p / "playbooks/deploy.yml", "\n# changed\n"),
    "environment file: service config": lambda p: edit_env(p, r"HELLO_GREETING: .*$", "HELLO_GREETING: hi"),
    "environment file: rollout": lambda p: edit_env(p, r"batch_size: 100%$", "batch_size: 1"),
    "terraform input: app_count": lambda p: edit_env(p, r"app_count: 3$", "app_count: 2"),
    "terraform module": lambda p: append(p / "terraform/modules/local_fleet/variables.tf", "\n# changed\n"),
    "secrets file": lambda p: append(p / "inventories/dev/secrets.yml", "\n"),
}


def test_unchanged_project_keeps_its_fingerprint(project_copy: Path) -> None:
    before = fingerprint(rendered(project_copy), RELEASE)
    # state and caches beside the inputs are not inputs
    (project_copy / "roles/rust_service/library/__pycache__").mkdir(exist_ok=True)
    (project_copy / "roles/rust_service/library/__pycache__/rust_release.cpython-311.pyc").write_bytes(b"\0")
    (project_copy / ".orchestrate/dev/journal.db").write_bytes(b"x")
    assert fingerprint(rendered(project_copy), RELEASE) == before
    assert len(before) == 64


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_input_turns_the_noop_off(project_copy: Path, change: str) -> None:
    before = fingerprint(rendered(project_copy), RELEASE)
    CHANGES[change](project_copy)
    assert fingerprint(rendered(project_copy), RELEASE) != before


def test_the_rendered_terraform_inputs_are_covered(project_copy: Path) -> None:
    # the rendered root itself, not only the files it is rendered from (e.g. an endpoint override)
    loaded = rendered(project_copy)
    before = fingerprint(loaded, RELEASE)
    tfvars = loaded.state_dir / "terraform" / "terraform.tfvars.json"
    tfvars.write_text(tfvars.read_text().replace('"app_count": 3', '"app_count": 4'))
    assert fingerprint(loaded, RELEASE) != before


def test_another_release_turns_the_noop_off(project_copy: Path) -> None:
    loaded = rendered(project_copy)
    assert fingerprint(loaded, RELEASE) != fingerprint(loaded, "0.2.0-aaaaaaaaaaaa")
    assert fingerprint(loaded, RELEASE) != fingerprint(loaded, None)


def test_a_change_to_the_cargo_projects_source_counts(project_copy: Path, tmp_path: Path) -> None:
    # the release gates judge the source: a new lint or test changes the run even when the binary does not
    loaded = rendered(project_copy)
    crate = tmp_path / "svc"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text('[package]\nname = "svc"\nversion = "0.1.0"\n')
    (crate / "src" / "main.rs").write_text("fn main() {}\n")
    before = fingerprint(loaded, RELEASE, source=crate)
    (crate / "target" / "release").mkdir(parents=True)
    (crate / "target" / "release" / "svc").write_text("built")
    assert fingerprint(loaded, RELEASE, source=crate) == before  # build output is not source
    (crate / "src" / "main.rs").write_text("fn main() {}\n#[test]\nfn t() {}\n")
    assert fingerprint(loaded, RELEASE, source=crate) != before
    binary = crate / "target" / "release" / "svc"
    assert fingerprint(loaded, RELEASE, source=binary) == fingerprint(loaded, RELEASE)


def test_a_noop_run_is_a_full_reference_for_the_next_one(tmp_path: Path) -> None:
    # up, no-op, no-op, ...: each no-op must carry what the next no-op check compares, or every
    # second `up` on an unchanged fleet would be a full run
    steps = ["build", "render", "gates", "deploy"]
    with Journal.open(tmp_path / "dev") as journal:
        full = journal.start_run("up", ["up", "dev"], steps=steps, release=RELEASE)
        for name in steps:
            detail: dict[str, Any] = {}
            if name == "render":
                detail = {"fingerprint": "f" * 64}
            elif name == "gates":
                detail = {"skipped_by_operator": {"gates": ["checkov"], "reason": "outage"}}
            with full.step(name, **detail):
                pass
        full.complete()
        for _ in range(2):
            previous = last_completed_up(journal)
            assert previous is not None
            assert _recorded_fingerprint(previous) == "f" * 64
            assert operator_skipped_gates(previous) == {"checkov"}
            noop = journal.start_run("up", ["up", "dev"], steps=steps, release=RELEASE)
            carried = noop_details(previous, "f" * 64)
            for name in steps:
                noop.skip(name, "no-op: nothing changed", carried.get(name))
            noop.complete()
            assert last_completed_up(journal).id == noop.id  # type: ignore[union-attr]
        # a run whose operator skipped nothing carries no skipped gates forward
        clean = journal.start_run("up", ["up", "dev"], steps=steps, release=RELEASE)
        for name in steps:
            with clean.step(name, **({"fingerprint": "e" * 64} if name == "render" else {})):
                pass
        clean.complete()
        assert noop_details(last_completed_up(journal), "e" * 64) == {  # type: ignore[arg-type]
            "render": {"fingerprint": "e" * 64}}
