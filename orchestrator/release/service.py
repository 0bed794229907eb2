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
restored; 1: anything else); SIGINT or SIGTERM during a playbook raises ReleaseInterrupted (exit 130,
the run `interrupted`) once the hosts that had switched are back, carrying the outcome too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import SecretRef
from orchestrator.errors import ExitStatus, OrchestratorError, UsageError
from orchestrator.fleet.inventory import Host, app_hosts
from orchestrator.fleet.select import ansible_limit, match_hosts, split_patterns
from orchestrator.release.hosts import DeployRequest, deploy, release_vars, role_vars, rollback, strategy_vars
from orchestrator.release.notices import outcome_notification
from orchestrator.release.probe import fleet_status
from orchestrator.release.results import (
    EventSink,
    FleetStatus,
    GateFailedRestored,
    ReleaseInterrupted,
    ReleaseRun,
    ReleaseRunError,
)
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
from orchestrator.runs.identity import ProcessIdentity, isoformat, utcnow
from orchestrator.runs.journal import StepHandle
from orchestrator.runs.lock import DEFAULT_LOCK_WAIT
from orchestrator.runs.session import LockedRun, locked_run
from orchestrator.tools.process import LineCallback
from orchestrator.traffic.gates import GateDecision
from orchestrator.traffic.state import colors, other, read_state

if TYPE_CHECKING:  # types only: what a rollback does not use is imported where it is used
    from orchestrator.release.artifact import Release
    from orchestrator.release.check import DeployCheck

NO_BACKUP_NOTE = "not recorded: --skip-backup (a host is staged only once backed up)"


@dataclass(frozen=True)
class DeployCommand:
    """A deploy as an operator (or cron) asks for it."""

    release_path: Path | str
    """A binary, a cargo project, a .tar.gz bundle, or an https://, http:// or s3:// URL."""
    strategy: str | None = None
    """As asked (`canary` resolves against the inventory); None: the environment's rollout.strategy."""
    secrets: Mapping[str, Any] = field(default_factory=dict)
    backup: bool = True
    tuned: bool = True
    argv: Sequence[str] = ()
    lock_wait: float | None = DEFAULT_LOCK_WAIT
    limit: tuple[str, ...] = ()
    """App host names or globs the deploy is limited to (none: every app host; not with a traffic strategy)."""
    check: bool = False
    """Only say what would change on each host (Ansible's check mode): no lock, no backup, no change."""
    sha256: str | None = None
    """--sha256 of the artifact: required for a URL (a mismatch refuses the release), checked for a file."""
    version: str | None = None
    """--version: the release's version, whatever the artifact says."""


@dataclass(frozen=True)
class RollbackCommand:
    """A rollback: to each host's previous release, or to `to` on every host."""

    to: str | None = None
    tuned: bool = True
    argv: Sequence[str] = ()
    lock_wait: float | None = DEFAULT_LOCK_WAIT
    limit: tuple[str, ...] = ()
    """App host names or globs to roll back (host by host, even after a traffic release)."""


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
    check: DeployCheck | None = None
    """`deploy --check`: what would change, per host (nothing ran)."""

    @property
    def release(self) -> str | None:
        if self.check is not None:
            return self.check.release
        if self.traffic is not None:
            return self.traffic.release
        if self.hosts is not None:
            return self.hosts.target
        return self.detail.get("release")

    @property
    def state(self) -> str:
        if self.check is not None:
            return "would_change" if self.check.changes else "unchanged"
        if self.traffic is not None:
            return self.traffic.state
        if self.hosts is not None:
            return self.hosts.state
        return str(self.detail.get("state", "unchanged"))

    def as_dict(self) -> dict[str, Any]:
        """The result's JSON: the host-level run's or the traffic release's shape, plus what ran."""
        if self.check is not None:
            base = self.check.as_dict()
        elif self.traffic is not None:
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
        """The environment lock and a journalled run of `command` (the same path for every entry point).

        Once the run has ended and the lock is released, the delivery metrics on the monitoring host
        are written again (best effort: orchestrator.monitoring.delivery)."""
        from orchestrator.monitoring.delivery import publish_after_run

        entered = False
        try:
            with locked_run(coordination_for(self.loaded), command=command, argv=list(argv), steps=list(steps),
                            wait=wait, on_wait=self.info, env=self.loaded.name) as session:
                entered = True
                yield session
        except Exception:
            if entered:
                publish_after_run(self.loaded, self.info)
            raise
        publish_after_run(self.loaded, self.info)

    def deploy(self, command: DeployCommand) -> ReleaseOutcome:
        """Deploy `command.release_path` under the lock, as a journalled run `deploy`; with
        `command.check`, only say what would change (no lock, no run, nothing changes)."""
        app_hosts(self.loaded)  # no inventory: a UsageError before the lock is even taken
        ran = resolve_strategy(self.loaded, command.strategy)
        limited = self._limited(command.limit, ran)
        if command.check:
            return self.check(command, ran, limited)
        argv = command.argv or ["deploy", self.loaded.name, "--release", str(command.release_path)]
        with self.session("deploy", argv, steps=["deploy"], wait=command.lock_wait) as session, \
                session.run.step("deploy") as step:
            return self.deploy_step(step, command, ran=ran)

    def rollback(self, command: RollbackCommand) -> ReleaseOutcome:
        """Roll back under the lock, as a journalled run `rollback`."""
        limited = self._limited(command.limit, None)
        argv = command.argv or ["rollback", self.loaded.name, *(["--to", command.to] if command.to else [])]
        with self.session("rollback", argv, steps=["rollback"], wait=command.lock_wait) as session, \
                session.run.step("rollback") as step:
            return self.rollback_step(step, command.to, tuned=command.tuned,
                                      limit=ansible_limit(limited) if limited else None)

    # --- the work, inside a run's step ----------------------------------------------------------

    def deploy_step(self, step: StepHandle, command: DeployCommand, *,
                    ran: RanStrategy | None = None) -> ReleaseOutcome:
        """Prepare, back up and deploy inside `step` (its run holds the lock); the webhooks hear how
        it ended (`deploy`, or `gate_failed` when a gate failed and the hosts are back)."""
        return self._notified(step, "deploy", command.secrets, lambda: self._deploy_step(step, command, ran=ran))

    def _deploy_step(self, step: StepHandle, command: DeployCommand, *,
                     ran: RanStrategy | None = None) -> ReleaseOutcome:
        ran = ran or resolve_strategy(self.loaded, command.strategy)
        requested = command.strategy or self.loaded.env.rollout.strategy
        step.update(strategy=ran, requested_strategy=requested)
        outcome = ReleaseOutcome(env=self.loaded.name, action="deploy", strategy=ran, requested_strategy=requested,
                                 journal_run=step.run.id)
        from orchestrator.release.artifact import built_at, prepare_release

        self.info(f"deploying {command.release_path} to {self.loaded.name} ({ran})")
        # the artifact first: a release that does not build, test or stage changes nothing
        release = prepare_release(self.loaded, command.release_path, sha256=command.sha256, version=command.version,
                                  on_output=self.on_output)
        step.update(release=release.id, sha256=release.sha256, built=isoformat(built_at(release)))
        transitions = None
        if command.backup:
            from orchestrator.release.backup import create_backup  # only a deploy backs up

            transitions = HostTransitions.for_run(step.run, release=release.id)
            self.info("backing up the app hosts before the release")
            backup = create_backup(self.loaded, on_event=self.on_event, tuned=command.tuned)
            outcome.backup = backup.id
            step.update(backup=backup.id)
            # the journal's per-host state machine starts at backed_up
            transitions.backed_up(backup.id, [(h.host, h.release_id) for h in backup.hosts])
        else:
            step.update(host_transitions=NO_BACKUP_NOTE)
        limited = self._limited(command.limit, ran)
        request = DeployRequest(release_path=command.release_path, strategy=host_strategy(ran), tuned=command.tuned,
                                secret_vars=self._service_secrets(command.secrets), prepared=release,
                                limit=ansible_limit(limited) if limited else None)
        if limited:
            step.update(limit=[h.name for h in limited])
        self._run_release(step, outcome, request, ran, transitions)
        return outcome

    def check(self, command: DeployCommand, ran: RanStrategy, limited: list[Host] | None) -> ReleaseOutcome:
        """`deploy --check`: prepare the artifact, then run the deploy in Ansible's check mode on the
        hosts it would touch (the limit; the idle colour under a traffic strategy). No lock, no
        backup, no journal run: nothing changes on any host."""
        from orchestrator.release.artifact import prepare_release
        from orchestrator.release.check import check_deploy  # only `deploy --check` runs in check mode
        from orchestrator.release.signing import Staged, sealed_for_shipping

        requested = command.strategy or self.loaded.env.rollout.strategy
        outcome = ReleaseOutcome(env=self.loaded.name, action="deploy", strategy=ran, requested_strategy=requested)
        self.info(f"checking what deploying {command.release_path} to {self.loaded.name} would change ({ran})")
        release = prepare_release(self.loaded, command.release_path, on_output=self.on_output)
        hosts = limited or app_hosts(self.loaded)
        notes = []
        if is_traffic(ran):
            state = read_state(self.loaded)
            idle = other(state.active or "blue")
            hosts = colors(hosts)[idle]
            notes.append(f"{ran} deploys to the idle colour ({idle}) first: {', '.join(h.name for h in hosts)}")
        # the signed manifest the hosts would verify, as a deploy ships it (controller-side only)
        sealed = sealed_for_shipping(self.loaded, Staged(id=release.id, version=release.version,
                                                         directory=release.binary.parent, source=release.source))
        extra = {**role_vars(self.loaded, None), **release_vars(release), **sealed.role_vars(),
                 **strategy_vars(self.loaded, "rolling", [h.name for h in hosts])}
        outcome.check = check_deploy(self.loaded, hosts, release, extra, secret_vars=command.secrets, strategy=ran,
                                     tuned=command.tuned, on_event=self.on_event)
        outcome.check.notes[:0] = notes
        return outcome

    def deploy_for_up(self, step: StepHandle, release: Release, *, secrets: Mapping[str, Any],
                      tuned: bool = True) -> ReleaseOutcome:
        """`up`'s deploy step: the hosts were backed up by its backup step, the artifact built by its
        build step. Under a traffic strategy a first release (nothing serves yet) goes to every
        host, and a release the serving colour already runs is left as it is. The webhooks hear of
        it unless nothing changed (a scheduled `up` that finds the release serving is no news)."""
        return self._notified(step, "deploy", secrets, lambda: self._deploy_for_up(step, release, secrets=secrets,
                                                                                   tuned=tuned),
                              release=release.id, quiet_when_unchanged=True)

    def _deploy_for_up(self, step: StepHandle, release: Release, *, secrets: Mapping[str, Any],
                       tuned: bool = True) -> ReleaseOutcome:
        ran = resolve_strategy(self.loaded, None)
        requested = self.loaded.env.rollout.strategy
        step.update(strategy=ran, requested_strategy=requested)
        outcome = ReleaseOutcome(env=self.loaded.name, action="deploy", strategy=ran, requested_strategy=requested,
                                 journal_run=step.run.id)
        transitions = HostTransitions.for_run(step.run, release=release.id)
        request = DeployRequest(release_path=release.source, strategy=host_strategy(ran), tuned=tuned,
                                secret_vars=self._service_secrets(secrets), prepared=release)
        if not is_traffic(ran):
            self._run_release(step, outcome, request, ran, transitions)
            return outcome
        decisions: list[dict[str, Any]] = []

        def record(decision: GateDecision) -> None:
            decisions.append({**decision.as_dict(), "at": isoformat(utcnow())})
            step.update(decisions=decisions)
            if self.on_decision is not None:
                self.on_decision(decision)

        try:
            traffic_request = TrafficRequest(deploy=request, strategy=ran, transitions=transitions)
            up_deploy = release_for_up(self.loaded, traffic_request,
                                       release_id=release.id, on_event=self.on_event, on_decision=record,
                                       run_id=step.run.id)
        except (TrafficGateFailed, GateFailedRestored, ReleaseRunError) as exc:
            raise self._failed(exc, outcome, step) from exc
        except ReleaseInterrupted as exc:
            self._carry_outcome(exc, outcome)
            raise
        outcome.strategy = up_deploy.strategy
        outcome.detail = dict(up_deploy.detail)
        step.detail.update(up_deploy.detail)
        if up_deploy.release:
            step.run.set_release(up_deploy.release)
        return outcome

    def rollback_step(self, step: StepHandle, to: str | None, *, tuned: bool = True,
                      limit: str | None = None) -> ReleaseOutcome:
        """Inside `step`: the switch back to the colour that served before when a traffic release left
        one (and no `to` or `limit` is named), else each app host (of `limit`) to its previous
        release (or `to`). The webhooks hear of it (`rollback`)."""
        return self._notified(step, "rollback", None, lambda: self._rollback_step(step, to, tuned=tuned, limit=limit),
                              release=to)

    def _rollback_step(self, step: StepHandle, to: str | None, *, tuned: bool = True,
                       limit: str | None = None) -> ReleaseOutcome:
        if to is None and limit is None and switch_back_pending(self.loaded):
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
                                         transitions=HostTransitions.for_run(step.run), limit=limit)
            except (GateFailedRestored, ReleaseRunError) as exc:
                raise self._failed(exc, outcome, step) from exc
            except ReleaseInterrupted as exc:
                self._carry_outcome(exc, outcome)
                raise
        step.detail.update(outcome.journal_detail())
        if outcome.release:
            step.run.set_release(outcome.release)
        return outcome

    def fleet_status(self, *, tuned: bool = True) -> FleetStatus:
        """Every app host's release, previous release, unit and health, probed directly (no playbook;
        `tuned` is accepted for the callers that pass it)."""
        return fleet_status(self.loaded)

    # --- notifications --------------------------------------------------------------------------

    def _service_secrets(self, secrets: Mapping[str, Any]) -> dict[str, Any]:
        """The service's secrets: the vault's, less the ones `notify:` uses (webhook URLs are the
        tool's, not the service's environment)."""
        used = {w.url.secret for w in self.loaded.env.notify.webhooks if isinstance(w.url, SecretRef)}
        return {k: v for k, v in secrets.items() if k not in used}

    def _notified(self, step: StepHandle, event: str, secrets: Mapping[str, Any] | None,
                  work: Callable[[], ReleaseOutcome], *, release: str | None = None,
                  quiet_when_unchanged: bool = False) -> ReleaseOutcome:
        """Run `work` and tell the webhooks how it ended (`gate_failed` for a deploy whose gate failed
        with the hosts back); what the posts did goes into the step's detail (the journal). A failure
        to notify never changes how the release ended."""
        try:
            outcome = work()
        except ReleaseFailed as exc:
            gate = exc.exit_status == ExitStatus.ROLLED_BACK and event == "deploy"
            self._notify(step, "gate_failed" if gate else event, exc.result, secrets, error=exc.message)
            raise
        except OrchestratorError as exc:
            failed = ReleaseOutcome(env=self.loaded.name, action=event, strategy=event, journal_run=step.run.id,
                                    detail={"state": "failed", "release": step.detail.get("release", release)})
            self._notify(step, event, failed, secrets, error=exc.message)
            raise
        if not (quiet_when_unchanged and outcome.state == "unchanged"):
            self._notify(step, event, outcome, secrets)
        return outcome

    def _notify(self, step: StepHandle, event: str, outcome: ReleaseOutcome, secrets: Mapping[str, Any] | None,
                *, error: str = "") -> None:
        if not self.loaded.env.notify.webhooks:
            return
        try:
            from orchestrator.notify.webhooks import Notifier, failures

            notifier = Notifier.for_env(self.loaded, secrets=dict(secrets) if secrets is not None else None)
            if not notifier.wants(event):
                return
            notice = outcome_notification(event, env=self.loaded.name, release=outcome.release, state=outcome.state,
                                          run_id=step.run.id, strategy=outcome.strategy, hosts_run=outcome.hosts,
                                          traffic=outcome.traffic, user=ProcessIdentity.current().user, error=error)
            deliveries = notifier.send(notice)
            recorded = [*step.detail.get("notifications", []), *(d.as_dict() for d in deliveries)]
            step.update(notifications=recorded)
            for delivery in failures(deliveries):
                self.info(f"notifying {delivery.target} of {event} failed: {delivery.error} "
                          f"(kept in run {step.run.id})")
        except Exception as exc:  # never let a notification change how a release ended
            self.info(f"notifying the webhooks of {event} failed: {type(exc).__name__}: {exc}")

    # --- helpers --------------------------------------------------------------------------------

    def _limited(self, patterns: Sequence[str], ran: RanStrategy | None) -> list[Host] | None:
        """The app hosts `--limit` names (names or globs), or None without a limit. A traffic strategy
        moves traffic between whole colours: a limit is refused with it."""
        if not patterns:
            return None
        if ran is not None and is_traffic(ran):
            raise UsageError(f"--limit deploys host by host; {ran} moves traffic between whole colours (use "
                             "--strategy rolling or canary-hosts with --limit)")
        return match_hosts(app_hosts(self.loaded), split_patterns(patterns), what="app host")

    def _run_release(self, step: StepHandle, outcome: ReleaseOutcome, request: DeployRequest, ran: RanStrategy,
                     transitions: HostTransitions | None) -> None:
        try:
            if is_traffic(ran):
                decisions: list[dict[str, Any]] = []

                def record(decision: GateDecision) -> None:
                    decisions.append({**decision.as_dict(), "at": isoformat(utcnow())})
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
                if request.limit is None:
                    # every app host now runs the release: no colour is left to switch back to
                    note_host_deploy(self.loaded, outcome.hosts.target)
        except (TrafficGateFailed, GateFailedRestored, ReleaseRunError) as exc:
            raise self._failed(exc, outcome, step) from exc
        except ReleaseInterrupted as exc:
            self._carry_outcome(exc, outcome)
            raise
        step.detail.update(outcome.journal_detail())
        if outcome.release:
            step.run.set_release(outcome.release)

    @staticmethod
    def _carry_outcome(exc: ReleaseInterrupted, outcome: ReleaseOutcome) -> None:
        """Let the interrupt of a release carry its outcome (what the hosts are on), not the bare run."""
        exc.run.strategy = exc.run.strategy or outcome.strategy
        outcome.hosts = exc.run
        exc.result = outcome

    def _failed(self, exc: TrafficGateFailed | GateFailedRestored | ReleaseRunError,
                outcome: ReleaseOutcome, step: StepHandle) -> ReleaseFailed:
        """The outcome of a failed release (what ran and what the hosts are on), as the error to raise.

        The failing hosts' central log lines since the step started join the gate's evidence."""
        if isinstance(exc, TrafficGateFailed):
            outcome.traffic = exc.result
            run = exc.result.deploy
            failing = sorted(exc.result.restored_hosts)
            if not failing and run is not None:
                failing = [h.name for h in run.hosts]
        else:
            exc.run.strategy = exc.run.strategy or outcome.strategy
            outcome.hosts = run = exc.run
            failing = [h.name for h in exc.run.hosts if h.failed]
        evidence = run.evidence_dir if run is not None and run.evidence_dir is not None \
            else self.loaded.paths.evidence(step.run.id)
        from orchestrator.monitoring.logs import keep_gate_evidence

        keep_gate_evidence(self.loaded, evidence, failing, since=step.started)
        restored = isinstance(exc, (TrafficGateFailed, GateFailedRestored))
        status = ExitStatus.ROLLED_BACK if restored else ExitStatus.FAILED
        return ReleaseFailed(exc.message, outcome, exit_status=status, hint=exc.hint)
