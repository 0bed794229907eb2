"""The release use case: deploy and roll back, the same way for every entry point.

`orchestrate deploy`, `orchestrate rollback`, the deploy step of `orchestrate up` (and so cron and
`orchestrate resume`) and the heal server's rollback remediation all call this module. A release
is, in this order and nowhere else:

    resolve the strategy -> prepare the artifact (build, test, stage: a bad release stops here)
    -> back up the app hosts -> record each host's transitions -> deploy it (host level, or to
    the idle colour with traffic gates) -> note the serving colour -> record the release

and a rollback is the switch back to the colour that served before when a traffic release left
one, else the host-level rollback to each host's previous release (or a named one).

`ReleaseService.deploy` and `.rollback` take the environment lock and write a journalled run
(`orchestrate runs ENV`); `deploy_step`, `deploy_for_up` and `rollback_step` do the same work
inside a step of a run someone else holds (`up`, the heal server). Failures raise ReleaseFailed
carrying the outcome, with the exit status of what failed (3: gate failed, previous release
restored; 1: anything else).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import ExitStatus, OrchestratorError
from orchestrator.fleet.inventory import app_hosts
from orchestrator.release.artifact import Release, prepare_release
from orchestrator.release.backup import create_backup
from orchestrator.release.hosts import DeployRequest, deploy, rollback, status
from orchestrator.release.results import EventSink, GateFailedRestored, ReleaseRun, ReleaseRunError
from orchestrator.release.strategies import RanStrategy, host_strategy, is_traffic, note_host_deploy, resolve_strategy
from orchestrator.release.traffic import (
    DecisionSink,
    TrafficGateFailed,
    TrafficRelease,
    TrafficRequest,
    release_for_up,
    switch_back,
    switch_back_pending,
    traffic_release,
)
from orchestrator.release.transitions import HostTransitions
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.journal import StepHandle
from orchestrator.runs.lock import DEFAULT_LOCK_WAIT
from orchestrator.runs.session import LockedRun, locked_run
from orchestrator.tools.process import LineCallback
from orchestrator.traffic.gates import GateDecision

NO_BACKUP_NOTE = "not recorded: --skip-backup (a host is staged only once backed up)"


@dataclass(frozen=True)
class DeployCommand:
    """A deploy as an operator (or cron) asks for it."""

    release_path: Path
    strategy: str | None = None
    """As asked (`canary` resolves against the inventory); None: the environment's rollout.strategy."""
    secrets: Mapping[str, Any] = field(default_factory=dict)
    backup: bool = True
    tuned: bool = True
    argv: Sequence[str] = ()
    lock_wait: float | None = DEFAULT_LOCK_WAIT


@dataclass(frozen=True)
class RollbackCommand:
    """A rollback: to each host's previous release, or to `to` on every host."""

    to: str | None = None
    tuned: bool = True
    argv: Sequence[str] = ()
    lock_wait: float | None = DEFAULT_LOCK_WAIT


@dataclass
class ReleaseOutcome:
    """How a deploy or rollback ended, whichever way it ran."""

    env: str
    action: str
    """deploy | rollback"""
    strategy: str
    """What ran: rolling, canary-hosts, canary-traffic, blue-green, switch-back or rollback."""
    requested_strategy: str | None = None
    hosts: ReleaseRun | None = None
    traffic: TrafficRelease | None = None
    backup: str | None = None
    journal_run: str | None = None
    """The run in the environment's journal (`orchestrate runs ENV RUN_ID`)."""
    detail: dict[str, Any] = field(default_factory=dict)
    """What `up` records for its deploy step when no deploy ran (first release, already serving)."""

    @property
    def release(self) -> str | None:
        if self.traffic is not None:
            return self.traffic.release
        if self.hosts is not None:
            return self.hosts.target
        return self.detail.get("release")

    @property
    def state(self) -> str:
        if self.traffic is not None:
            return self.traffic.state
        if self.hosts is not None:
            return self.hosts.state
        return str(self.detail.get("state", "unchanged"))

    def as_dict(self) -> dict[str, Any]:
        """The result's JSON: the host-level run's or the traffic release's shape, plus what ran."""
        if self.traffic is not None:
            base = self.traffic.as_dict()
        elif self.hosts is not None:
            base = self.hosts.as_dict()
        else:
            base = {"env": self.env, "action": self.action, "release": self.release, "state": self.state}
        base.update(strategy=self.strategy, journal_run=self.journal_run, backup=self.backup)
        if self.requested_strategy is not None:
            base["requested_strategy"] = self.requested_strategy
        return base

    def journal_detail(self) -> dict[str, Any]:
        """What the journal step records of this outcome."""
        detail: dict[str, Any] = {"strategy": self.strategy, "release": self.release, "state": self.state}
        if self.traffic is not None:
            detail.update(active=self.traffic.active, previous=self.traffic.previous, weights=self.traffic.weights,
                          switch_seconds=round(self.traffic.switch_seconds, 3))
        if self.hosts is not None:
            detail["changed"] = self.hosts.changed
        return {**detail, **self.detail}


class ReleaseFailed(OrchestratorError):
    """A deploy or rollback failed; carries its outcome (`result`) for the JSON and the table.

    Exit 3 when a gate failed and every host is back on the release it served, healthy; 1 otherwise.
    """

    def __init__(self, message: str, result: ReleaseOutcome, *, exit_status: ExitStatus,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result
        self.exit_status = exit_status


@dataclass
class ReleaseService:
    """Releases of one environment. The callbacks feed progress displays; all are optional."""

    loaded: LoadedEnvironment
    info: Callable[[str], None] = lambda message: None
    on_event: EventSink | None = None
    on_output: LineCallback | None = None
    on_decision: DecisionSink | None = None

    # --- sessions -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, command: str, argv: Sequence[str], *, steps: Sequence[str],
                wait: float | None = DEFAULT_LOCK_WAIT) -> Iterator[LockedRun]:
        """The environment lock and a journalled run of `command` (the same path for every entry point)."""
        with locked_run(coordination_for(self.loaded), command=command, argv=list(argv), steps=list(steps), wait=wait,
                        on_wait=self.info, env=self.loaded.name) as session:
            yield session

    def deploy(self, command: DeployCommand) -> ReleaseOutcome:
        """Deploy `command.release_path` under the lock, as a journalled run `deploy`."""
        app_hosts(self.loaded)  # no inventory: a UsageError before the lock is even taken
        ran = resolve_strategy(self.loaded, command.strategy)
        argv = command.argv or ["deploy", self.loaded.name, "--release", str(command.release_path)]
        with self.session("deploy", argv, steps=["deploy"], wait=command.lock_wait) as session, \
                session.run.step("deploy") as step:
            return self.deploy_step(step, command, ran=ran)

    def rollback(self, command: RollbackCommand) -> ReleaseOutcome:
        """Roll back under the lock, as a journalled run `rollback`."""
        app_hosts(self.loaded)
        argv = command.argv or ["rollback", self.loaded.name, *(["--to", command.to] if command.to else [])]
        with self.session("rollback", argv, steps=["rollback"], wait=command.lock_wait) as session, \
                session.run.step("rollback") as step:
            return self.rollback_step(step, command.to, tuned=command.tuned)

    # --- the work, inside a run's step ----------------------------------------------------------

    def deploy_step(self, step: StepHandle, command: DeployCommand, *,
                    ran: RanStrategy | None = None) -> ReleaseOutcome:
        """Prepare, back up and deploy inside `step` (its run holds the lock)."""
        ran = ran or resolve_strategy(self.loaded, command.strategy)
        requested = command.strategy or self.loaded.env.rollout.strategy
        step.update(strategy=ran, requested_strategy=requested)
        outcome = ReleaseOutcome(env=self.loaded.name, action="deploy", strategy=ran, requested_strategy=requested,
                                 journal_run=step.run.id)
        self.info(f"deploying {command.release_path} to {self.loaded.name} ({ran})")
        # the artifact first: a release that does not build, test or stage changes nothing
        release = prepare_release(self.loaded, command.release_path, on_output=self.on_output)
        step.update(release=release.id, sha256=release.sha256)
        transitions = None
        if command.backup:
            transitions = HostTransitions.for_run(step.run, release=release.id)
            self.info("backing up the app hosts before the release")
            backup = create_backup(self.loaded, on_event=self.on_event)
            outcome.backup = backup.id
            step.update(backup=backup.id)
            # the journal's per-host state machine starts at backed_up
            transitions.backed_up(backup.id, [(h.host, h.release_id) for h in backup.hosts])
        else:
            step.update(host_transitions=NO_BACKUP_NOTE)
        request = DeployRequest(release_path=command.release_path, strategy=host_strategy(ran), tuned=command.tuned,
                                secret_vars=command.secrets, prepared=release)
        self._run_release(step, outcome, request, ran, transitions)
        return outcome

    def deploy_for_up(self, step: StepHandle, release: Release, *, secrets: Mapping[str, Any],
                      tuned: bool = True) -> ReleaseOutcome:
        """`up`'s deploy step: the hosts were backed up by its backup step, the artifact built by its
        build step. Under a traffic strategy a first release (nothing serves yet) goes to every
        host, and a release the serving colour already runs is left as it is."""
        ran = resolve_strategy(self.loaded, None)
        requested = self.loaded.env.rollout.strategy
        step.update(strategy=ran, requested_strategy=requested)
        outcome = ReleaseOutcome(env=self.loaded.name, action="deploy", strategy=ran, requested_strategy=requested,
                                 journal_run=step.run.id)
        transitions = HostTransitions.for_run(step.run, release=release.id)
        request = DeployRequest(release_path=release.source, strategy=host_strategy(ran), tuned=tuned,
                                secret_vars=secrets, prepared=release)
        if not is_traffic(ran):
            self._run_release(step, outcome, request, ran, transitions)
            return outcome
        decisions: list[dict[str, Any]] = []

        def record(decision: GateDecision) -> None:
            decisions.append(decision.as_dict())
            step.update(decisions=decisions)
            if self.on_decision is not None:
                self.on_decision(decision)

        try:
            traffic_request = TrafficRequest(deploy=request, strategy=ran, transitions=transitions)
            up_deploy = release_for_up(self.loaded, traffic_request,
                                       release_id=release.id, on_event=self.on_event, on_decision=record,
                                       run_id=step.run.id)
        except (TrafficGateFailed, GateFailedRestored, ReleaseRunError) as exc:
            raise self._failed(exc, outcome) from exc
        outcome.strategy = up_deploy.strategy
        outcome.detail = dict(up_deploy.detail)
        step.detail.update(up_deploy.detail)
        if up_deploy.release:
            step.run.set_release(up_deploy.release)
        return outcome

    def rollback_step(self, step: StepHandle, to: str | None, *, tuned: bool = True) -> ReleaseOutcome:
        """Inside `step`: the switch back to the colour that served before when a traffic release left
        one (and no `to` is named), else each app host to its previous release (or `to`)."""
        if to is None and switch_back_pending(self.loaded):
            self.info(f"switching {self.loaded.name}'s traffic back to the previous colour")
            result = switch_back(self.loaded)
            outcome = ReleaseOutcome(env=self.loaded.name, action="rollback", strategy="switch-back",
                                     traffic=result, journal_run=step.run.id)
        else:
            self.info(f"rolling back {self.loaded.name} to {to or 'the previous release'}")
            outcome = ReleaseOutcome(env=self.loaded.name, action="rollback", strategy="rollback",
                                     journal_run=step.run.id)
            try:
                # each app host idle -> rolled_back (or failed) in the journal, as it happens
                outcome.hosts = rollback(self.loaded, to, tuned=tuned, on_event=self.on_event,
                                         transitions=HostTransitions.for_run(step.run))
            except (GateFailedRestored, ReleaseRunError) as exc:
                raise self._failed(exc, outcome) from exc
        step.detail.update(outcome.journal_detail())
        if outcome.release:
            step.run.set_release(outcome.release)
        return outcome

    def fleet_status(self, *, tuned: bool = True) -> Any:
        """Every app host's release, previous release, unit and health."""
        return status(self.loaded, tuned=tuned)

    # --- helpers --------------------------------------------------------------------------------

    def _run_release(self, step: StepHandle, outcome: ReleaseOutcome, request: DeployRequest, ran: RanStrategy,
                     transitions: HostTransitions | None) -> None:
        try:
            if is_traffic(ran):
                decisions: list[dict[str, Any]] = []

                def record(decision: GateDecision) -> None:
                    decisions.append(decision.as_dict())
                    step.update(decisions=decisions)
                    if self.on_decision is not None:
                        self.on_decision(decision)

                outcome.traffic = traffic_release(
                    self.loaded, TrafficRequest(deploy=request, strategy=ran, transitions=transitions),
                    on_event=self.on_event, on_decision=record, run_id=step.run.id)
            else:
                outcome.hosts = deploy(self.loaded, request, on_event=self.on_event, on_output=self.on_output,
                                       transitions=transitions)
                outcome.hosts.strategy = ran
                # every app host now runs the release: no colour is left to switch back to
                note_host_deploy(self.loaded, outcome.hosts.target)
        except (TrafficGateFailed, GateFailedRestored, ReleaseRunError) as exc:
            raise self._failed(exc, outcome) from exc
        step.detail.update(outcome.journal_detail())
        if outcome.release:
            step.run.set_release(outcome.release)

    def _failed(self, exc: TrafficGateFailed | GateFailedRestored | ReleaseRunError,
                outcome: ReleaseOutcome) -> ReleaseFailed:
        """The outcome of a failed release (what ran and what the hosts are on), as the error to raise."""
        if isinstance(exc, TrafficGateFailed):
            outcome.traffic = exc.result
        else:
            exc.run.strategy = exc.run.strategy or outcome.strategy
            outcome.hosts = exc.run
        restored = isinstance(exc, (TrafficGateFailed, GateFailedRestored))
        status = ExitStatus.ROLLED_BACK if restored else ExitStatus.FAILED
        return ReleaseFailed(exc.message, outcome, exit_status=status, hint=exc.hint)
