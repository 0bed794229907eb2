"""The one place that runs a project playbook against an environment.

Every playbook run of an environment (deploy, rollback, status, backup, restore, lb, monitoring,
remediations) goes through `run_env_playbook`: the environment's inventory, its runs directory,
the address guard of its fleet, the tuned settings, and a run id that says what ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.fleet.inventory import allowed_networks
from orchestrator.tools.ansible import HostEvent, PlaybookResult, PlaybookRun, new_run_id, run_playbook

EventSink = Callable[[HostEvent], None]


def env_playbook_run(loaded: LoadedEnvironment, playbook: str, extra_vars: Mapping[str, Any], *,
                     run_id: str | None = None, tuned: bool = True, mitogen: bool = False,
                     secret_vars: Mapping[str, Any] | None = None, limit: str | None = None,
                     timeout: int | None = None) -> PlaybookRun:
    """The PlaybookRun of `playbooks/<playbook>` against `loaded`'s inventory (pure)."""
    return PlaybookRun(
        playbook=loaded.project_dir / "playbooks" / playbook, inventory=loaded.paths.inventory,
        project_dir=loaded.project_dir, runs_dir=loaded.paths.runs,
        extra_vars=dict(extra_vars), secret_vars=dict(secret_vars or {}), limit=limit, tuned=tuned,
        mitogen=mitogen, run_id=run_id or f"{new_run_id()}-{playbook.removesuffix('.yml')}",
        allowed_networks=allowed_networks(loaded), **({"timeout": timeout} if timeout is not None else {}),
    )


def run_env_playbook(loaded: LoadedEnvironment, playbook: str, extra_vars: Mapping[str, Any], *,
                     on_event: EventSink | None = None, run_id: str | None = None, tuned: bool = True,
                     mitogen: bool = False, secret_vars: Mapping[str, Any] | None = None,
                     limit: str | None = None, timeout: int | None = None) -> PlaybookResult:
    """Run `playbooks/<playbook>` against `loaded` (see `env_playbook_run`); the result, never raises
    for a failed play (the caller decides what a failure means)."""
    return run_playbook(env_playbook_run(loaded, playbook, extra_vars, run_id=run_id, tuned=tuned, mitogen=mitogen,
                                         secret_vars=secret_vars, limit=limit, timeout=timeout),
                        on_event=on_event)
