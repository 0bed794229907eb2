"""The check registry of `orchestrate verify`: a check is a function registered with `@check(name)`
that returns ok, failed or skipped; `run_one` runs one and turns any error into a failed result.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import CommandError, OrchestratorError
from orchestrator.tools.terraform import Terraform

Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: name, ok/failed/skipped, a detail and the files it blames."""

    name: str
    status: Status
    detail: str = ""
    files: tuple[str, ...] = ()
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "files": list(self.files),
                "duration": round(self.duration, 2)}


@dataclass(frozen=True)
class Outcome:
    """What a check function returns (the runner adds the name and the duration)."""

    status: Status
    detail: str = ""
    files: tuple[str, ...] = ()


def ok(detail: str = "") -> Outcome:
    """A passed check, with what it covered."""
    return Outcome("ok", detail)


def failed(detail: str, files: Sequence[str] = ()) -> Outcome:
    """A failed check: what is wrong, and the project files to blame."""
    return Outcome("failed", detail, tuple(dict.fromkeys(files)))


def skipped(reason: str) -> Outcome:
    """A check whose subject does not exist in the project; `reason` says what is missing."""
    return Outcome("skipped", reason)


@dataclass(frozen=True)
class VerifyReport:
    """Every check's result for one environment."""

    env: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not fail the report)."""
        return all(c.status != "failed" for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "failed"]

    def as_dict(self) -> dict[str, Any]:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "failed", "skipped")}
        return {"env": self.env, "ok": self.ok, "counts": counts, "checks": [c.as_dict() for c in self.checks]}


@dataclass
class VerifyContext:
    """What checks read: the project, the environment (when it loaded), and cached work."""

    project_dir: Path
    env_name: str
    loaded: LoadedEnvironment | None = None
    load_error: str = ""
    _workspace: _Workspace | None = None
    _plan: dict[str, Any] | None = None
    _plan_source: str = ""
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> LoadedEnvironment:
        assert self.loaded is not None, "checks that need the environment run only when it loaded"
        return self.loaded

    def rel(self, path: Path | str) -> str:
        """`path` relative to the project directory when it is inside it."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.project_dir.resolve()))
        except ValueError:
            return str(p)

    @property
    def playbooks(self) -> list[Path]:
        directory = self.project_dir / "playbooks"
        return sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml"))

    @property
    def roles(self) -> list[Path]:
        directory = self.project_dir / "roles"
        return sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []

    def ansible_env(self) -> dict[str, str]:
        """Roles from the project, the venv's programs first on PATH, no colour, no retry files."""
        # ansible-lint runs ansible-playbook and ansible-config itself: they must be found on
        # PATH even when orchestrate was started by its full path without an activated venv.
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", os.defpath)]),
            "ANSIBLE_ROLES_PATH": str(self.project_dir / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "NO_COLOR": "1",
        }


CheckFunc = Callable[[VerifyContext], Outcome]


@dataclass(frozen=True)
class Check:
    """A registered check."""

    name: str
    description: str
    func: CheckFunc
    needs_env: bool = True


CHECKS: list[Check] = []


def check(name: str, description: str, *, needs_env: bool = True) -> Callable[[CheckFunc], CheckFunc]:
    """Register a check; checks run in registration order."""

    def register(func: CheckFunc) -> CheckFunc:
        CHECKS[:] = [c for c in CHECKS if c.name != name]
        CHECKS.append(Check(name, description, func, needs_env))
        return func

    return register


@dataclass
class _Workspace:
    """A scratch copy of the rendered root (local backend), initialised once per verify run."""

    directory: Path
    terraform: Terraform
    module_dir: Path


def _run_one(registered: Check, context: VerifyContext) -> CheckResult:
    started = time.monotonic()
    if registered.needs_env and context.loaded is None:
        outcome = skipped(f"the environment file did not load: {context.load_error}")
    else:
        try:
            outcome = registered.func(context)
        except OrchestratorError as exc:
            outcome = failed(exc.message + (f"\n{exc.output_tail}" if isinstance(exc, CommandError) else ""))
        except Exception as exc:  # a check that crashes fails; the others still run
            outcome = failed(f"internal error in check {registered.name}: {type(exc).__name__}: {exc}")
    return CheckResult(registered.name, outcome.status, outcome.detail.strip(), outcome.files,
                       time.monotonic() - started)
