"""Wiring of `orchestrate heal serve`: the environment's lock, audit log and remediations for the
heal server, and the server's state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.fleet.inventory import fleet_hosts
from orchestrator.fleet.playbooks import run_env_playbook
from orchestrator.heal.policy import Alert, HealPolicy, PolicySettings
from orchestrator.heal.present import JournalPresent
from orchestrator.heal.server import (
    AuditSink,
    EnvironmentLock,
    HealServer,
    HealSettings,
    PresentCheck,
    RemediationResult,
    Remediator,
    default_listeners,
)
from orchestrator.monitoring.files import ensure_heal_token, read_heal_token
from orchestrator.notify.heal import NotifyingAudit
from orchestrator.release.direct import direct_enabled, restart_params, run_release_calls
from orchestrator.release.hosts import role_vars
from orchestrator.release.service import ReleaseService
from orchestrator.release.traffic import switch_back_pending
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.journal import StepHandle
from orchestrator.runs.session import LockedRun
from orchestrator.tools.ansible import new_run_id


class ProjectLock:
    """The heal server's hold on the environment: the lock and a journalled run, taken through the
    release service like every other command (`orchestrate runs ENV` lists each remediation)."""

    def __init__(self, loaded: LoadedEnvironment, service: ReleaseService | None = None) -> None:
        self.loaded = loaded
        self.service = service or ReleaseService(loaded)

    @contextlib.contextmanager
    def hold(self, wait: float, *, command: str = "remediate") -> Iterator[object]:
        """Hold the environment lock and a run `heal` with one step, `command` (LockBusy after `wait` s)."""
        argv = ["heal", command, self.loaded.name]
        with self.service.session("heal", argv, steps=[command], wait=wait) as session:
            yield session
            run = session.run
            if run.record().stored_state == "running" and not run.is_done(command):
                # dropped while waiting (e.g. the alert resolved): the run says so and completes
                run.skip(command, "no remediation ran")


class PlaybookRemediator:
    """The remediations: `restart` restarts the service on the alert's host behind its health gate
    (one session running the role's rust_release; playbooks/remediate-restart.yml with
    ORCHESTRATE_DIRECT=0 or stock settings); `rollback`
    is the release service's rollback (the switch back to the colour that served before when a
    traffic release left one, else each app host to its previous release).

    `restart` is limited to the alert's host, which must be an app host of the inventory (the
    label comes from the network, even if authenticated); `rollback` concerns the environment.
    Each runs as the one step of the run the lock's `hold` started; a failure fails that run.
    """

    def __init__(self, loaded: LoadedEnvironment, *, tuned: bool = True, service: ReleaseService | None = None) -> None:
        self.loaded = loaded
        self.tuned = tuned
        self.service = service or ReleaseService(loaded)
        # Releases a rollback moved the fleet away from. A rollback leaves the bad release as the
        # hosts' `previous`, so a second rollback would bring it back: refuse that and escalate.
        self.rolled_back_from: set[str] = set()

    def playbook(self, action: str) -> Path:
        return self.loaded.project_dir / "playbooks" / f"remediate-{action}.yml"

    def remediate(self, action: str, alert: Alert, session: object = None) -> RemediationResult:
        """Carry out `action` for `alert` inside `session` (a LockedRun from `ProjectLock.hold`, or
        None: a run of its own); failures are results, not errors."""
        if action not in ("restart", "rollback"):
            return RemediationResult(ok=False, detail=f"no remediation {action!r}")
        if not isinstance(session, LockedRun):
            with self.service.session("heal", ["heal", action, self.loaded.name], steps=[action], wait=0) as own:
                return self.remediate(action, alert, own)
        started = time.monotonic()
        run = session.run
        try:
            with run.step(action) as step:
                step.update(alert=alert.name, host=alert.host)
                detail = self._restart(alert) if action == "restart" else self._rollback(step)
        except OrchestratorError as exc:
            run.fail(exc.message, exit_code=int(exc.exit_status))
            return RemediationResult(ok=False, detail=exc.message, duration=time.monotonic() - started)
        return RemediationResult(ok=True, detail=f"{detail} (run {run.id})", duration=time.monotonic() - started)

    def _restart(self, alert: Alert) -> str:
        app_hosts = {h.name for h in fleet_hosts(self.loaded) if "app" in h.groups}
        if alert.host not in app_hosts:
            raise UsageError(f"host {alert.host!r} is not an app host of {self.loaded.paths.inventory}")
        run_id = f"{new_run_id()}-heal-restart"
        if direct_enabled(self.tuned):
            # one session on the host: the role's rust_release restarts the current release, gated
            (host,) = [h for h in fleet_hosts(self.loaded) if h.name == alert.host]
            done = run_release_calls(self.loaded, [host], lambda _: restart_params(self.loaded), run_id=run_id,
                                     label="restart", evidence_dir=self.loaded.paths.evidence(run_id))
            if not done.ok:
                raise OrchestratorError(done.summary_line() or f"restart: {done.status}")
            return f"restart {done.status}"
        extra = {**role_vars(self.loaded, self.loaded.paths.evidence(run_id)), "remediate_host": alert.host,
                 "remediate_alert": alert.name}
        result = run_env_playbook(self.loaded, "remediate-restart.yml", extra, limit=alert.host, tuned=self.tuned,
                                  run_id=run_id)
        if not result.ok:
            raise OrchestratorError(result.summary_line() or f"{result.playbook}: {result.status}")
        return f"{result.playbook} {result.status}"

    def _rollback(self, step: StepHandle) -> str:
        leaving: set[str] = set()
        if not switch_back_pending(self.loaded):
            refusal, leaving = self._check_rollback()
            if refusal:
                raise UsageError(refusal)
        outcome = self.service.rollback_step(step, None, tuned=self.tuned)
        self.rolled_back_from |= leaving
        return f"{outcome.strategy} {outcome.state}: {outcome.release or '-'}"

    def _check_rollback(self) -> tuple[str, set[str]]:
        """(refusal or "", releases the rollback would leave) from the fleet's current state."""
        fleet = self.service.fleet_status(tuned=self.tuned)
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


#: seconds the heal server waits for a busy audit database before it counts an audit error and goes on
AUDIT_TIMEOUT = 5.0


def build_server(
    loaded: LoadedEnvironment,
    *,
    listen: str | None = None,
    remediator: Remediator | None = None,
    audit: AuditSink | None = None,
    lock: EnvironmentLock | None = None,
    present: PresentCheck | None = None,
    log: Callable[[str], None] | None = None,
) -> HealServer:
    """A HealServer for `loaded` with the project's audit log, lock, playbook remediator and the
    journal-and-Prometheus view of the present; `log` receives what goes wrong in the worker."""
    env = loaded.env
    if not env.healing.enabled:
        raise UsageError(f"healing is disabled for {env.name} (healing.enabled: false in {loaded.path})")
    listeners = default_listeners(env, listen)
    service = ReleaseService(loaded)
    if remediator is None:
        remediator = PlaybookRemediator(loaded, service=service)
    if audit is None:
        # every remediation and escalation is also posted to the environment's webhooks (notify:)
        audit = NotifyingAudit(coordination_for(loaded).audit(timeout=AUDIT_TIMEOUT), loaded)
    return HealServer(
        policy=HealPolicy(PolicySettings.from_env(env)),
        remediator=remediator,
        audit=audit,
        lock=lock or ProjectLock(loaded, service),
        token=token_of(loaded),
        listeners=listeners[:1],
        # The bridge address exists only while the fleet's bridge does: bound when it appears.
        optional_listeners=listeners[1:],
        settings=HealSettings.from_env(env),
        present=present or JournalPresent.for_env(loaded),
        log=log,
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
