"""Wiring of `orchestrate heal serve`: the environment's lock, audit log and remediations for the
heal server, and the server's state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.fleet.inventory import allowed_networks, fleet_hosts
from orchestrator.heal.policy import Alert, HealPolicy, PolicySettings
from orchestrator.heal.server import (
    AuditSink,
    EnvironmentLock,
    HealServer,
    HealSettings,
    RemediationResult,
    Remediator,
    default_listeners,
)
from orchestrator.monitoring.files import ensure_heal_token, read_heal_token
from orchestrator.release.hosts import role_vars, status
from orchestrator.runs.audit import AuditLog
from orchestrator.runs.lock import EnvironmentLock as _ProjectEnvironmentLock
from orchestrator.tools import ansible


class ProjectLock:
    """The environment lock of orchestrator.runs.lock, as the heal server uses it."""

    def __init__(self, loaded: LoadedEnvironment) -> None:
        self.loaded = loaded

    @contextlib.contextmanager
    def hold(self, wait: float) -> Iterator[object]:
        """Hold the environment lock for the block (LockBusy after `wait` seconds)."""
        lock = _ProjectEnvironmentLock(self.loaded.state_dir, command=f"orchestrate heal serve {self.loaded.name}",
                     env=self.loaded.name)
        lock.acquire(wait)
        try:
            yield lock
        finally:
            lock.release()


class PlaybookRemediator:
    """Runs playbooks/remediate-<action>.yml through the ansible-runner adapter.

    `restart` is limited to the alert's host, which must be an app host of the inventory (the
    label comes from the network, even if authenticated); `rollback` concerns the environment.
    """

    def __init__(self, loaded: LoadedEnvironment, *, tuned: bool = True) -> None:
        self.loaded = loaded
        self.tuned = tuned
        # Releases a rollback moved the fleet away from. A rollback leaves the bad release as the
        # hosts' `previous`, so a second rollback would bring it back: refuse that and escalate.
        self.rolled_back_from: set[str] = set()

    def playbook(self, action: str) -> Path:
        return self.loaded.project_dir / "playbooks" / f"remediate-{action}.yml"

    def remediate(self, action: str, alert: Alert) -> RemediationResult:
        """Run the remediation playbook of `action` for `alert`; failures are results, not errors."""
        if action not in ("restart", "rollback"):
            return RemediationResult(ok=False, detail=f"no playbook for remediation {action!r}")
        limit = None
        leaving: set[str] = set()
        if action == "rollback":
            refusal, leaving = self._check_rollback()
            if refusal:
                return RemediationResult(ok=False, detail=refusal)
        if action == "restart":
            app_hosts = {h.name for h in fleet_hosts(self.loaded) if "app" in h.groups}
            if alert.host not in app_hosts:
                return RemediationResult(ok=False, detail=f"host {alert.host!r} is not an app host of "
                                                          f"{self.loaded.paths.inventory}")
            limit = alert.host
        run_id = f"{ansible.new_run_id()}-heal-{action}"
        evidence_dir = self.loaded.paths.evidence(run_id)
        extra = {**role_vars(self.loaded, evidence_dir), "remediate_host": alert.host or "app",
                 "remediate_alert": alert.name, "rollback_to": ""}
        result = ansible.run_playbook(ansible.PlaybookRun(
            playbook=self.playbook(action), inventory=self.loaded.paths.inventory,
            project_dir=self.loaded.project_dir, runs_dir=self.loaded.paths.runs,
            extra_vars=extra, limit=limit, tuned=self.tuned, run_id=run_id,
            allowed_networks=allowed_networks(self.loaded),
        ))
        if result.ok and action == "rollback":
            self.rolled_back_from |= leaving
        detail = result.summary_line() if not result.ok else f"{result.playbook} {result.status} (run {run_id})"
        return RemediationResult(ok=result.ok, detail=detail or f"{result.playbook}: {result.status}",
                                 duration=result.duration)

    def _check_rollback(self) -> tuple[str, set[str]]:
        """(refusal or "", releases the rollback would leave) from the fleet's current state."""
        fleet = status(self.loaded, tuned=self.tuned)
        targets = {h.previous_release for h in fleet.hosts if h.previous_release}
        if not targets:
            return "no previous release recorded on the app hosts: nothing to roll back to", set()
        toggles = targets & self.rolled_back_from
        if toggles:
            return (f"the hosts' previous release {', '.join(sorted(toggles))} is the one an earlier rollback "
                    "left; rolling back again would return to it", set())
        return "", {h.release for h in fleet.hosts if h.release}


def token_of(loaded: LoadedEnvironment) -> str:
    """The heal token of `loaded` (created on first use)."""
    return read_heal_token(ensure_heal_token(loaded))


def build_server(
    loaded: LoadedEnvironment,
    *,
    listen: str | None = None,
    remediator: Remediator | None = None,
    audit: AuditSink | None = None,
    lock: EnvironmentLock | None = None,
) -> HealServer:
    """A HealServer for `loaded` with the project's audit log, lock and playbook remediator."""
    env = loaded.env
    if not env.healing.enabled:
        raise UsageError(f"healing is disabled for {env.name} (healing.enabled: false in {loaded.path})")
    listeners = default_listeners(env, listen)
    if remediator is None:
        remediator = PlaybookRemediator(loaded)
    if audit is None:
        audit = AuditLog(loaded.state_dir, env=env.name)
    return HealServer(
        policy=HealPolicy(PolicySettings.from_env(env)),
        remediator=remediator,
        audit=audit,
        lock=lock or ProjectLock(loaded),
        token=token_of(loaded),
        listeners=listeners[:1],
        # The bridge address exists only while the fleet's bridge does: bound when it appears.
        optional_listeners=listeners[1:],
        settings=HealSettings.from_env(env),
    )


def state_path(loaded: LoadedEnvironment) -> Path:
    """.orchestrate/<env>/heal.json: pid and addresses of the running `heal serve` (for `make down`)."""
    return loaded.paths.heal_state


def write_state(loaded: LoadedEnvironment, addresses: Sequence[tuple[str, int]]) -> Path:
    """Record this process as the environment's heal server (atomically)."""
    path = state_path(loaded)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "listen": [f"{h}:{p}" for h, p in addresses],
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    tmp.replace(path)
    return path


def clear_state(loaded: LoadedEnvironment) -> None:
    """Remove heal.json when it still names this process."""
    path = state_path(loaded)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
