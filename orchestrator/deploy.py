"""Deploy, roll back and report releases of the service on an environment's app hosts.

A deploy stages the release (orchestrator.release), then runs playbooks/deploy.yml: per host,
the role's setup tasks, the binary copy and one call of the `rust_release` module that
switches, restarts, gates on health and switches back by itself on failure. When any host fails
its gate the rollout stops, and every host that had already switched in this run is put back on
the release it had before (playbooks/rollback.yml with a per-host target), so the fleet ends on
one release. The outcome is exit 3 (HealthGateFailed) when that restore left every host healthy.

With `transitions` (HostTransitions, e.g. on the run journal), every app host's moves through
the deployment state machine (orchestrator.models.process) are recorded as they happen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.config import LoadedEnvironment, parse_duration
from orchestrator.errors import AnsibleError, HealthGateFailed, OrchestratorError, UsageError
from orchestrator.inventory import Host, allowed_networks, app_hosts
from orchestrator.models import process as process_model
from orchestrator.release import Release, is_release_id, prepare_release
from orchestrator.secrets import SECRETS_VAR
from orchestrator.tools.ansible import HostEvent, PlaybookResult, PlaybookRun, TaskResult, new_run_id, run_playbook

Strategy = Literal["rolling", "canary"]
EventSink = Callable[[HostEvent], None]
LineSink = Callable[[str], None]

MODULE = "rust_release"


# --- requests and results ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeployRequest:
    """What `orchestrate deploy` asks for."""

    release_path: Path
    strategy: Strategy | None = None
    """None: the environment's rollout.strategy."""
    tuned: bool = True
    secret_vars: Mapping[str, Any] = field(default_factory=dict)
    """The service's secret environment (NAME: value, e.g. from orchestrator.secrets.load_secrets):
    it reaches only the EnvironmentFile on the hosts, never a file on the controller."""
    build_env: Mapping[str, str] | None = None
    limit: str | None = None
    """Ansible host pattern the deploy is limited to (blue-green: the idle colour's hosts)."""


@dataclass(frozen=True)
class HostOutcome:
    """What one rust_release call did on one host."""

    name: str
    address: str
    release_before: str | None
    release: str | None
    previous_release: str | None
    switched: bool
    rolled_back: bool
    healthy: bool | None
    changed: bool
    failed: bool
    message: str = ""
    previous_before: str | None = None
    """What `previous` named before the call (a fleet restore puts it back)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "address": self.address, "release_before": self.release_before,
            "previous_before": self.previous_before,
            "release": self.release, "previous_release": self.previous_release, "switched": self.switched,
            "rolled_back": self.rolled_back, "healthy": self.healthy, "changed": self.changed,
            "failed": self.failed, "message": self.message,
        }


@dataclass
class ReleaseRun:
    """Outcome of a deploy or rollback run (and of the fleet restore that may follow it)."""

    env: str
    action: Literal["deploy", "rollback"]
    run_id: str
    state: Literal["deployed", "unchanged", "rolled_back", "failed"]
    target: str | None
    hosts: list[HostOutcome]
    run: PlaybookResult
    restore: PlaybookResult | None = None
    restored_hosts: dict[str, str] = field(default_factory=dict)
    evidence_dir: Path | None = None
    release: Release | None = None
    strategy: str | None = None
    notes: list[str] = field(default_factory=list)
    """Things an operator should know that did not make the run fail (e.g. cleanup left releases)."""

    @property
    def changed(self) -> int:
        """Changed tasks over every host of the main run."""
        return self.run.changed

    def as_dict(self) -> dict[str, Any]:
        evidence = self.evidence_dir if self.evidence_dir is not None and self.evidence_dir.exists() else None
        return {
            "env": self.env, "action": self.action, "run_id": self.run_id, "state": self.state,
            "release": self.target, "strategy": self.strategy,
            "artifact": self.release.as_dict() if self.release is not None else None,
            "changed": self.changed,
            "hosts": [h.as_dict() for h in self.hosts],
            "restored_hosts": self.restored_hosts,
            "notes": self.notes,
            "evidence_dir": str(evidence) if evidence is not None else None,
            "run": self.run.as_dict(),
            "restore": self.restore.as_dict() if self.restore is not None else None,
        }


class ReleaseRunError(OrchestratorError):
    """A deploy or rollback failed without a clean restore (exit 1); carries the run."""

    def __init__(self, message: str, run: ReleaseRun, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run = run


class GateFailedRestored(HealthGateFailed):
    """A release failed its health gate and every host is back, healthy, on its release (exit 3)."""

    def __init__(self, message: str, run: ReleaseRun, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run = run


@dataclass(frozen=True)
class HostStatus:
    """One app host as `orchestrate status` reports it."""

    name: str
    address: str
    release: str | None
    previous_release: str | None
    unit: str
    healthy: bool
    releases: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "address": self.address, "release": self.release,
            "previous_release": self.previous_release, "unit": self.unit, "healthy": self.healthy,
            "releases": self.releases,
        }
        if self.error:
            data["error"] = self.error
        return data


@dataclass(frozen=True)
class FleetStatus:
    """`orchestrate status ENV`: the contract shape of DESIGN.md."""

    env: str
    hosts: list[HostStatus]
    duration: float

    @property
    def release(self) -> str | None:
        """The release when the whole fleet is on one, else None."""
        found = {h.release for h in self.hosts}
        return found.pop() if len(found) == 1 and self.hosts else None

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "release": self.release, "hosts": [h.as_dict() for h in self.hosts]}


# --- pure helpers (unit-tested) ----------------------------------------------------------------


def role_vars(loaded: LoadedEnvironment, evidence_dir: Path | None) -> dict[str, Any]:
    """Inputs of roles/rust_service from the environment (never a secret)."""
    service = loaded.env.service
    return {
        "rust_service_name": service.name,
        "rust_service_user": service.effective_user,
        "rust_service_data_dir": service.effective_data_dir,
        "rust_service_port": service.port,
        "rust_service_config": dict(service.config),
        "rust_service_health_path": service.health.path,
        "rust_service_health_timeout": parse_duration(service.health.timeout),
        "rust_service_health_interval": parse_duration(service.health.interval),
        "rust_service_keep_releases": service.keep_releases,
        "rust_service_evidence_dir": str(evidence_dir) if evidence_dir is not None else "",
    }


def release_vars(release: Release) -> dict[str, Any]:
    return {
        "rust_service_release_id": release.id,
        "rust_service_release_version": release.version,
        "rust_service_release_sha256": release.sha256,
        "rust_service_release_binary": str(release.binary),
    }


def strategy_vars(loaded: LoadedEnvironment, strategy: Strategy, app_hosts: list[str]) -> dict[str, Any]:
    """deploy.yml's rollout variables: canary hosts first (the first N app hosts), then batches."""
    rollout = loaded.env.rollout
    canary: list[str] = []
    if strategy == "canary":
        if len(app_hosts) < 2:
            raise UsageError(f"canary needs at least 2 app hosts; {loaded.name} has {len(app_hosts)}")
        canary = app_hosts[: min(rollout.canary_hosts, len(app_hosts) - 1)]
    return {
        "deploy_canary": canary,
        "deploy_batch": rollout.batch_size,
        "deploy_max_fail_percentage": rollout.max_fail_percentage,
    }


def outcomes(results: list[TaskResult], addresses: Mapping[str, str]) -> list[HostOutcome]:
    """Per-host outcome of the rust_release calls of a run (the last call per host wins)."""
    last: dict[str, TaskResult] = {}
    for result in results:
        # the role's other phases call the module too (status, the cleanup after a rollout); a
        # skipped call says nothing
        if result.status != "skipped" and result.task != CLEANUP_TASK and result.result.get("state") != "cleanup":
            last[result.host] = result
    found = []
    for host, result in sorted(last.items()):
        res = result.result
        failed = result.status in {"failed", "unreachable"}
        found.append(HostOutcome(
            name=host, address=addresses.get(host, ""),
            release_before=_opt(res.get("release_before")), release=_opt(res.get("release")),
            previous_release=_opt(res.get("previous_release")), switched=bool(res.get("switched")),
            rolled_back=bool(res.get("rolled_back")),
            healthy=res.get("healthy") if isinstance(res.get("healthy"), bool) else None,
            changed=bool(res.get("changed")), failed=failed,
            message=str(res.get("msg", "")) if failed else "",
            previous_before=_opt(res.get("previous_before")),
        ))
    return found


def to_restore(hosts: list[HostOutcome], target: str | None) -> dict[str, str]:
    """Hosts that switched to `target` in this run, with the release each had before it."""
    return {
        h.name: h.release_before
        for h in hosts
        if not h.failed and h.switched and h.release_before and (target is None or h.release == target)
    }


#: rust_release's previous_id meaning "no previous release": the link is removed
NO_PREVIOUS = "-"


def previous_to_restore(hosts: list[HostOutcome], restore: Mapping[str, str]) -> dict[str, str]:
    """For the hosts of `restore`: the release their `previous` named before the run (NO_PREVIOUS
    for none).

    Without it a restored host's `previous` would name the release that just failed, and a
    later `orchestrate rollback` would switch the host to it.
    """
    return {h.name: h.previous_before or NO_PREVIOUS for h in hosts if h.name in restore}


def _opt(value: object) -> str | None:
    return str(value) if value else None


# --- per-host transitions of the deployment state machine ----------------------------------------

TransitionSink = Callable[[str, str, str | None, dict[str, Any]], None]
"""Records one host's move `(host, to_state, release, detail)`, e.g. in the run journal
(`journal_sink`); raises (JournalError) to refuse a move the state machine does not allow."""

#: roles/rust_service tasks whose outcome moves a host: the binary copy (fetch.yml) and the one
#: rust_release call that switches, restarts and gates (release.yml)
STAGE_TASK_PREFIX = "Copy the release binary to the host"
RELEASE_TASK = "Switch to the release and pass the health gate"
#: deploy.yml's last play, after every host passed its gate: housekeeping, never the outcome
CLEANUP_TASK = "Remove releases beyond the ones to keep"

Phase = Literal["deploy", "restore", "rollback"]
"""Which playbook run drives the moves: deploy.yml, the fleet restore after a failed deploy, or
`orchestrate rollback`."""


class TransitionRefused(OrchestratorError):
    """A host transition the deployment state machine (or the journal) refused (exit 1)."""


def journal_sink(run: Any) -> TransitionSink:
    """A sink writing to `run.host_transition` (orchestrator.journal.Run): checked, committed."""

    def record(host: str, state: str, release: str | None, detail: dict[str, Any]) -> None:
        run.host_transition(host, state, release=release, detail=detail)

    return record


@dataclass
class HostTransitions:
    """Moves the app hosts of one run through orchestrator.models.process's state machine as a
    deploy or rollback happens, and hands every move to `sink`.

    Driven live by the playbook's HostEvents (`events(phase)`): the binary copy ok -> staged, the
    rust_release call ok -> switched + verified (or rolled_back for a rollback or the fleet
    restore), any failed or unreachable task -> failed; after a deploy run, the rust_release
    results add rolled_back for hosts whose gate failed and which put their previous release back
    healthy by themselves. A move to a state the host already passed on the forward path is a
    step observed again (a resumed run repeats its interrupted step) and records nothing.

    A refused move never goes unnoticed: `move` raises TransitionRefused; inside the event
    handler (where raising would tear ansible-runner down mid-run) the first refusal is kept,
    nothing more is recorded, and `check()` raises it once the playbook has finished.
    """

    sink: TransitionSink
    states: dict[str, str] = field(default_factory=dict)
    """Each host's latest state in this run (the journal's, for a resumed run); missing: idle."""
    release: str | None = None
    hosts: set[str] = field(default_factory=set)
    """The app hosts the playbook works on (set by `require`); events of other hosts are ignored."""
    refused: TransitionRefused | None = None

    @classmethod
    def for_run(cls, run: Any, *, release: str | None = None) -> HostTransitions:
        """Transitions of journal run `run` (a Run), continuing from the states it recorded."""
        return cls(sink=journal_sink(run), states=dict(run.host_states()), release=release)

    def state(self, host: str) -> str:
        return self.states.get(host, process_model.INITIAL_STATE.value)

    def move(self, host: str, to_state: process_model.HostState, **detail: Any) -> bool:
        """Record `host` -> `to_state`; False when it already passed that state (nothing recorded)."""
        if self.refused is not None:
            raise self.refused
        current = self.state(host)
        if current == to_state.value or process_model.already_passed(current, to_state):
            return False  # the same outcome reported again (a second failing task, a repeated step)
        try:
            process_model.validate_transition(current, to_state, host=host)
            self.sink(host, to_state.value, self.release, detail)
        except OrchestratorError as exc:
            illegal = isinstance(exc, process_model.IllegalTransition) or "illegal transition" in exc.message
            hint = ("the run journal records only moves the deployment state machine allows "
                    "(orchestrator/models/process.py)" if illegal else
                    "the run journal could not record it; `orchestrate runs ENV RUN_ID` shows what it holds")
            self.refused = TransitionRefused(f"host transition {'refused' if illegal else 'not recorded'}: "
                                             f"{exc.message}", hint=hint)
            raise self.refused from exc
        self.states[host] = to_state.value
        return True

    def backed_up(self, backup_id: str, hosts: Iterable[tuple[str, str | None]]) -> None:
        """Every (host, release it ran) of a backup that succeeded is backed_up."""
        for host, release in hosts:
            self.move(host, process_model.HostState.BACKED_UP, backup=backup_id, release_backed_up=release)

    def require(self, hosts: Iterable[str], phase: Phase) -> None:
        """Refuse (TransitionRefused), before any host is touched, a run whose hosts cannot take
        the phase's first move: a deploy needs every host backed up in this run and not aborted
        (a run that failed or rolled a host back never goes forward again); a rollback needs
        every host able to go to rolled_back."""
        self.hosts = set(hosts)
        first = process_model.HostState.STAGED if phase == "deploy" else process_model.HostState.ROLLED_BACK
        for host in sorted(self.hosts):
            current = self.state(host)
            if process_model.already_passed(current, first) or process_model.is_allowed(current, first):
                continue
            if current == process_model.INITIAL_STATE:
                why = "it has no backup in this run (the state machine stages a host only once it is backed_up)"
            elif current in process_model.ABORTING:
                why = ("this run already aborted on it; a run that failed or rolled a host back never goes "
                       "forward again: start a new run, which deploys every host again")
            else:
                why = f"from {current} the state machine does not allow {first.value}"
            raise TransitionRefused(f"host {host} is {current} in this run: {why}")

    def events(self, phase: Phase, also: EventSink | None = None) -> EventSink:
        """An ansible-runner event sink driving the moves of `phase` (after `also`, e.g. progress)."""

        def handle(event: HostEvent) -> None:
            if also is not None:
                also(event)
            if self.refused is not None or event.host not in self.hosts:
                return
            with contextlib.suppress(TransitionRefused):  # kept in self.refused; check() raises it
                self.on_event(phase, event)

        return handle

    def on_event(self, phase: Phase, event: HostEvent) -> None:
        """The move one task outcome means (pure mapping; raises TransitionRefused)."""
        S = process_model.HostState
        where = {"task": event.task}
        if event.task == CLEANUP_TASK:
            return  # removing old releases after the rollout passed: not a move of the deploy
        if event.status in {"failed", "unreachable"}:
            self.move(event.host, S.FAILED, **where, status=event.status, message=event.message)
        elif event.status not in {"ok", "changed"}:
            return
        elif phase == "deploy" and event.task.startswith(STAGE_TASK_PREFIX):
            self.move(event.host, S.STAGED, **where, copied=event.status == "changed")
        elif phase == "deploy" and event.task == RELEASE_TASK:
            self.move(event.host, S.SWITCHED, **where)
            self.move(event.host, S.VERIFIED, **where, health_gate="passed")
        elif event.task == RELEASE_TASK:
            self.move(event.host, S.ROLLED_BACK, **where, by="fleet restore" if phase == "restore" else "rollback")

    def after_run(self, phase: Phase, found: Iterable[HostOutcome]) -> None:
        """Moves only the results say: a deploy's host whose gate failed and which switched back to
        its previous release, healthy, by itself is rolled_back (else it stays failed)."""
        if phase != "deploy" or self.refused is not None:
            return
        for outcome in found:
            if outcome.name in self.hosts and outcome.failed and outcome.rolled_back and outcome.healthy:
                with contextlib.suppress(TransitionRefused):
                    self.move(outcome.name, process_model.HostState.ROLLED_BACK, by="rust_release",
                              release_restored=outcome.release)

    def check(self, outcome: OrchestratorError | None = None) -> None:
        """Raise the refusal kept while the playbook ran, saying how the run itself ended."""
        if self.refused is None:
            return
        ended = f"; the run itself: {outcome.message}" if outcome is not None else ""
        raise TransitionRefused(self.refused.message + ended, hint=self.refused.hint) from (outcome or self.refused)


def _checked(transitions: HostTransitions | None, conclude: Callable[[], ReleaseRun]) -> ReleaseRun:
    """`conclude()`, except that a host transition refused meanwhile is raised instead.

    When the run itself failed, its own error stands (its exit code is the contract: 3 after a
    restored gate failure) and the refusal is added to its hint.
    """
    try:
        run = conclude()
    except OrchestratorError as exc:
        if transitions is not None and transitions.refused is not None:
            also = f"the journal also refused a host transition: {transitions.refused.message}"
            exc.hint = f"{exc.hint}; {also}" if exc.hint else also
        raise
    if transitions is not None:
        transitions.check()
    return run


# --- the operations ------------------------------------------------------------------------------



def _playbook(loaded: LoadedEnvironment, name: str) -> Path:
    return loaded.project_dir / "playbooks" / name


def _run(loaded: LoadedEnvironment, playbook: str, extra_vars: Mapping[str, Any], *, tuned: bool,
         run_id: str, secret_vars: Mapping[str, Any] | None = None,
         on_event: EventSink | None = None, limit: str | None = None) -> PlaybookResult:
    return run_playbook(
        PlaybookRun(
            playbook=_playbook(loaded, playbook), inventory=loaded.paths.inventory,
            project_dir=loaded.project_dir, runs_dir=loaded.paths.runs,
            extra_vars=dict(extra_vars), secret_vars=dict(secret_vars or {}), tuned=tuned, run_id=run_id,
            limit=limit, allowed_networks=allowed_networks(loaded),
            # deploy/rollback/status are tested under mitogen (DESIGN.md: the biggest lever after
            # fewer module calls); ORCHESTRATE_ANSIBLE_MITOGEN=0 falls back to plain Ansible
            mitogen=True,
        ),
        on_event=on_event,
    )


def deploy(loaded: LoadedEnvironment, request: DeployRequest, *, on_event: EventSink | None = None,
           on_output: LineSink | None = None, before_ship: Callable[[], object] | None = None,
           transitions: HostTransitions | None = None) -> ReleaseRun:
    """Deploy `request.release_path` to the app hosts of `loaded`, health-gated.

    Returns the run when every host passed its gate (state deployed, or unchanged when the
    release was already current everywhere). Raises GateFailedRestored (exit 3) when a gate
    failed and every host is back and healthy on its previous release, ReleaseRunError (exit 1)
    for anything else, UsageError / ReleaseError before any host is touched.

    `transitions` records each host's moves live (`before_ship` records the backup's); a host
    that cannot be staged in this run (no backup, run already aborted) is TransitionRefused
    before any host changes, and a move refused during the run is raised after it.
    """
    hosts = app_hosts(loaded)
    strategy: Strategy = request.strategy or loaded.env.rollout.host_strategy
    rollout = strategy_vars(loaded, strategy, [h.name for h in hosts])
    release = prepare_release(loaded, request.release_path, on_output=on_output,
                              build_env=dict(request.build_env) if request.build_env else None)
    if transitions is not None:
        transitions.release = release.id
    if before_ship is not None:
        before_ship()  # e.g. the backup: only once the release was accepted, before any host changes
    if transitions is not None:
        transitions.require([h.name for h in hosts], "deploy")
    run_id = new_run_id()
    evidence_dir = loaded.paths.evidence(run_id)
    extra = {**role_vars(loaded, evidence_dir), **release_vars(release), **rollout}
    secret_vars = {SECRETS_VAR: dict(request.secret_vars)} if request.secret_vars else {}
    result = _run(loaded, "deploy.yml", extra, tuned=request.tuned, run_id=run_id,
                  secret_vars=secret_vars, limit=request.limit,
                  on_event=transitions.events("deploy", on_event) if transitions is not None else on_event)
    return _checked(transitions, lambda: _conclude(
        loaded, "deploy", result, release.id, hosts, tuned=request.tuned, evidence_dir=evidence_dir,
        release=release, strategy=strategy, on_event=on_event, transitions=transitions))


def rollback(loaded: LoadedEnvironment, to: str | None = None, *, tuned: bool = True,
             on_event: EventSink | None = None, transitions: HostTransitions | None = None) -> ReleaseRun:
    """Switch every app host to its previous release, or to release `to`, health-gated.

    `transitions` records idle -> rolled_back (or failed) per host as the rollback goes.
    """
    if to is not None and not is_release_id(to):
        raise UsageError(f"--to {to!r} is not a release id such as 0.2.0-0123456789ab")
    hosts = app_hosts(loaded)
    if transitions is not None:
        transitions.release = to
        transitions.require([h.name for h in hosts], "rollback")
    run_id = new_run_id()
    evidence_dir = loaded.paths.evidence(run_id)
    extra = {**role_vars(loaded, evidence_dir), "rollback_to": to or ""}
    result = _run(loaded, "rollback.yml", extra, tuned=tuned, run_id=run_id,
                  on_event=transitions.events("rollback", on_event) if transitions is not None else on_event)
    # the fleet restore after a failed rollback is not a deploy's restore: the state machine has no
    # move for undoing a rollback (rolled_back is final), so the restore's events drive nothing
    return _checked(transitions, lambda: _conclude(loaded, "rollback", result, to, hosts, tuned=tuned,
                                                   evidence_dir=evidence_dir, on_event=on_event, transitions=None))


def _conclude(loaded: LoadedEnvironment, action: Literal["deploy", "rollback"], result: PlaybookResult,
              target: str | None, hosts: list[Host], *, tuned: bool, evidence_dir: Path,
              release: Release | None = None, strategy: str | None = None,
              on_event: EventSink | None = None, transitions: HostTransitions | None = None) -> ReleaseRun:
    """Turn a run into a ReleaseRun; after a failure, put switched hosts back first.

    With `transitions`, the run's results add their moves and the restore's events drive
    rolled_back (or failed) for the hosts it puts back.
    """
    addresses = {h.name: h.address for h in hosts}
    found = outcomes(result.results_of(MODULE), addresses)
    if transitions is not None:
        transitions.after_run(action, found)
    run = ReleaseRun(env=loaded.name, action=action, run_id=result.run_id, state="deployed", target=target,
                     hosts=found, run=result, evidence_dir=evidence_dir, release=release, strategy=strategy)
    cleanup_failures = [f for f in result.failures if f.task == CLEANUP_TASK]
    if result.ok or (cleanup_failures and len(cleanup_failures) == len(result.failures)
                     and not any(h.failed for h in found)):
        # every host passed its gate; a host whose old releases could not be removed afterwards
        # (unreachable for a moment, a disk error) keeps them until the next deploy
        run.state = "deployed" if any(h.changed for h in found) else "unchanged"
        run.notes = [f"old releases not removed on {f.host}: {f.message}" for f in cleanup_failures]
        return run

    run.state = "failed"
    gate_failures = [h for h in found if h.failed and (h.rolled_back or h.healthy is False)]
    restore = to_restore(found, target)
    if restore:
        run.restored_hosts = restore
        extra = {**role_vars(loaded, evidence_dir), "rollback_targets": restore,
                 "rollback_previous": previous_to_restore(found, restore),
                 "rollback_hosts": ",".join(sorted(restore))}
        run.restore = _run(loaded, "rollback.yml", extra, tuned=tuned, run_id=f"{result.run_id}-restore",
                           on_event=transitions.events("restore", on_event) if transitions is not None else on_event)
    failures = result.summary_line() or f"ansible-playbook exited with {result.rc} ({result.status})"
    if run.restore is not None and not run.restore.ok:
        raise ReleaseRunError(
            f"{action} failed and restoring the hosts that had switched failed too; the fleet may be on "
            f"several releases: {run.restore.summary_line() or run.restore.status}",
            run, hint=f"failures of the {action}: {failures}",
        )
    self_restored = all(h.rolled_back and h.healthy for h in gate_failures)
    other_failures = [h for h in found if h.failed and h not in gate_failures]
    unreachable = [f for f in result.failures if f.host not in {h.name for h in found}]
    if gate_failures and self_restored and not other_failures and not unreachable:
        run.state = "rolled_back"
        names = ", ".join(h.name for h in gate_failures)
        back = ", ".join(sorted({h.release for h in gate_failures if h.release}))
        raise GateFailedRestored(
            f"{target or 'the release'} failed its health gate on {names}; every host is back on "
            f"{back or 'its previous release'} and healthy",
            run, hint=f"evidence: {evidence_dir}" if evidence_dir.exists() else None,
        )
    raise ReleaseRunError(f"{action} failed: {failures}", run)


def status(loaded: LoadedEnvironment, *, tuned: bool = True) -> FleetStatus:
    """Current and previous release, unit state and health of every app host (one module call each)."""
    hosts = app_hosts(loaded)
    result = _run(loaded, "status.yml", role_vars(loaded, None), tuned=tuned, run_id=new_run_id() + "-status")
    by_host = {r.host: r for r in result.results_of(MODULE) if r.status != "skipped"}
    found = []
    for host in hosts:
        task = by_host.get(host.name)
        if task is None or task.status in {"failed", "unreachable"}:
            failure = result.last_failure(host.name)
            found.append(HostStatus(
                name=host.name, address=host.address, release=None, previous_release=None,
                unit="unreachable" if task is None or task.status == "unreachable" else "unknown",
                healthy=False, error=failure.message if failure else "no result",
            ))
            continue
        res = task.result
        found.append(HostStatus(
            name=host.name, address=host.address, release=_opt(res.get("release")),
            previous_release=_opt(res.get("previous_release")), unit=str(res.get("unit") or "unknown"),
            healthy=bool(res.get("healthy")), releases=[str(r) for r in res.get("releases") or []],
        ))
    if not found:
        raise AnsibleError(f"status of {loaded.name} returned nothing: {result.summary_line() or result.status}")
    return FleetStatus(env=loaded.name, hosts=found, duration=result.duration)
