"""The fingerprint of an `up` run: everything its outcome depends on except the hosts themselves.

Two runs with the same fingerprint on a fleet that still reports the recorded release, healthy,
would do nothing: the second one ends early as a no-op.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.files import digest_files
from orchestrator.runs.journal import Journal
from orchestrator.runs.records import RunRecord
from orchestrator.tools.terraform import LOCK_FILE

#: files under these project directories feed the fingerprint of a run
FINGERPRINT_DIRS = ("roles", "playbooks", "terraform/modules")


def _source_files(project: Path) -> list[Path]:
    """The files of the cargo project at `project` the release gates judge (not target/, not dot dirs)."""
    return [p for p in project.rglob("*")
            if not any(part == "target" or part.startswith(".") for part in p.relative_to(project).parts[:-1])
            and p.is_file()]


def fingerprint(loaded: LoadedEnvironment, release_id: str | None, *, source: Path | str | None = None) -> str:
    """sha256 over everything a run's outcome depends on, except the hosts themselves.

    With `source` (the --release path), a cargo project's own files count too: the release gates
    judge the source, and a change that leaves the binary as it was (a new test, a lint) must still
    pass them.
    """
    root = loaded.project_dir
    files: list[Path] = [loaded.path]
    for name in FINGERPRINT_DIRS:
        base = root / name
        if base.is_dir():
            files += [p for p in base.rglob("*") if ".terraform" not in p.parts]
    rendered = loaded.paths.terraform
    files += [rendered / "main.tf", rendered / "terraform.tfvars.json"]
    # the repository's provider lock file (not the rendered copy, which init may write for an
    # environment that keeps none): a provider upgrade is a change to provision
    files.append(loaded.path.parent / LOCK_FILE)
    secrets = loaded.path.parent / "secrets.yml"
    if secrets.exists():
        files.append(secrets)  # encrypted text: a changed secret changes the fingerprint
    digest = hashlib.sha256(digest_files(files, root).encode())
    digest.update(f"\0release={release_id or ''}".encode())
    if isinstance(source, Path) and source.is_dir() and (source / "Cargo.toml").is_file():
        digest.update(f"\0source={digest_files(_source_files(source), source)}".encode())
    return digest.hexdigest()


def last_completed_up(journal: Journal) -> RunRecord | None:
    """The newest completed `up` run of the environment."""
    for record in journal.runs(limit=50, with_steps=True):
        if record.command == "up" and record.state == "completed":
            return record
    return None


def _recorded_fingerprint(record: RunRecord) -> str | None:
    for step in record.steps:
        value = (step.detail or {}).get("fingerprint")
        if value:
            return str(value)
    return None


def _gates_detail(record: RunRecord) -> dict[str, Any]:
    return next((dict(s.detail or {}) for s in record.steps if s.name == "gates"), {})


def operator_skipped_gates(record: RunRecord) -> set[str]:
    """The gates an operator skipped (`--skip-gate`) in the run `record`, or in the run it repeated."""
    return set((_gates_detail(record).get("skipped_by_operator") or {}).get("gates") or [])


def noop_details(previous: RunRecord, fingerprint_now: str) -> dict[str, dict[str, Any]]:
    """step -> the detail a no-op run records in its skipped steps, so that it is in turn a full
    reference for the next run's no-op check: the fingerprint (render) and the gates an operator
    skipped (gates). Without them, every no-op would be followed by a full run."""
    carried: dict[str, dict[str, Any]] = {"render": {"fingerprint": fingerprint_now}}
    skipped = _gates_detail(previous).get("skipped_by_operator")
    if skipped:
        carried["gates"] = {"skipped_by_operator": skipped}
    return carried
