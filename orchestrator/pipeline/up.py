"""`orchestrate up`: every stage of a rollout, executed through the run journal.

    build -> render -> gates -> provision -> inventory -> backup -> deploy -> lb -> monitoring -> verify

(gates are the release gates of orchestrator.pipeline.gates: a failed one refuses the release before
anything is provisioned or deployed; the build then skips the tests, which the gate `cargo-test`
runs. deploy follows rollout.strategy: blue-green and canary by traffic weight go through
orchestrator.release.traffic; lb configures the load balancer when the environment has one.)

Each stage is idempotent and runs as a journal step (written before and after it runs), under
the environment lock. A run that dies (SIGKILL, reboot, lost SSH) is continued by
`orchestrate resume RUN_ID`, which re-enters here with `resume=RUN_ID`: completed steps are
passed over, the interrupted one runs again. Deploys are health-gated and put every switched
host back on failure, so at every point each host serves a release that passed its gate.

When nothing changed since the last completed `up` (same rendered Terraform inputs, roles,
playbooks, environment file and release) and every host reports that release and is healthy,
the run ends early as a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.fleet.render import render_environment
from orchestrator.monitoring.delivery import publish_after_run
from orchestrator.pipeline.fingerprint import (
    _recorded_fingerprint,
    fingerprint,
    last_completed_up,
    noop_details,
    operator_skipped_gates,
)
from orchestrator.pipeline.gates import GateRequest, GateResult, check_skips, gates_step
from orchestrator.release.artifact import Release, peek_release_id, staged_release
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.journal import Journal, StepHandle
from orchestrator.runs.records import RunRecord
from orchestrator.runs.session import locked_run

#: fault injection for crash tests and game days: `up` SIGKILLs itself right before this step
#: starts (after the previous step's completion is committed to the journal); the value END
#: kills it after the last step and before the run is marked completed
CRASH_BEFORE_ENV = "ORCHESTRATE_CRASH_BEFORE_STEP"


#: the boundary after the last step (a CRASH_BEFORE_ENV value, and `resumed_at` of such a run)
END = "end"


#: a run recorded with another list (e.g. before the gates step existed) cannot be resumed by this
#: version: the journal refuses it (NotResumable, steps_changed) and a new run starts over
STEPS = ("build", "render", "gates", "provision", "inventory", "backup", "deploy", "lb", "monitoring", "verify")


Confirm = Callable[[Any], bool]


Info = Callable[[str], None]


class VerifyFailed(OrchestratorError):
    """After the deploy, some host is unhealthy or the fleet is on several releases."""


@dataclass(frozen=True)
class UpRequest:
    """What `orchestrate up ENV` asks for."""

    argv: list[str]
    release_path: Path | str | None = None
    """A binary, a cargo project, a bundle or a URL (orchestrator.release.artifact)."""
    sha256: str | None = None
    """--sha256: required for a URL, checked for a file."""
    version: str | None = None
    """--version: the release's version, whatever the artifact says."""
    yes: bool = False
    interactive: bool = False
    lock_wait: float | None = None
    resume: str | None = None
    force: bool = False
    """Run every stage even when nothing changed."""
    confirm: Confirm | None = None
    """Asked with the plan before a protected environment is changed (interactive runs)."""
    tuned: bool = True
    skip_gates: tuple[str, ...] = ()
    """Release gates passed over (`--skip-gate`, never for a protected environment), with `skip_reason`."""
    skip_reason: str = ""

    @property
    def gate_request(self) -> GateRequest:
        return GateRequest(release_path=self.release_path, skip=self.skip_gates, reason=self.skip_reason)


@dataclass
class UpResult:
    """How the run ended."""

    env: str
    run_id: str
    noop: bool
    release: str | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None
    resumed_at: str | None = None
    duration: float | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)
    """The release gates' results: name, status, seconds, findings, version, detail."""

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "run_id": self.run_id, "noop": self.noop, "release": self.release,
                "resumed_at": self.resumed_at, "duration": self.duration, "gates": self.gates, "steps": self.steps,
                "status": self.status}


@dataclass
class _Stages:
    loaded: LoadedEnvironment
    request: UpRequest
    info: Info
    on_terraform: Callable[[Any], None] | None = None
    on_host_event: Callable[[Any], None] | None = None
    on_gate: Callable[[GateResult], None] | None = None
    release_id: str | None = None
    staged_binary: Path | None = None
    release: Release | None = None
    """The artifact the build step staged (rebuilt from the journal when a run resumes after it)."""
    fingerprint: str | None = None
    status: dict[str, Any] | None = None
    gates_results: list[dict[str, Any]] = field(default_factory=list)
    carried: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What a no-op run records in its skipped steps, so that it can be the next run's reference:
    the fingerprint (render) and the gates an operator skipped (gates)."""

    def build(self, step: StepHandle) -> None:
        if self.request.release_path is None:
            step.detail["release"] = None
            return
        from orchestrator.release.artifact import built_at, prepare_release
        from orchestrator.runs.identity import isoformat

        # the tests run once, as the gate cargo-test (unless an operator skipped it)
        release = prepare_release(self.loaded, self.request.release_path, sha256=self.request.sha256,
                                  version=self.request.version, run_tests=False)
        self.release = release
        self.release_id = release.id
        self.staged_binary = release.binary
        step.detail.update(release=release.id, sha256=release.sha256, binary=str(release.binary),
                           built=isoformat(built_at(release)))
        step.run.set_release(release.id)

    def render(self, step: StepHandle) -> None:
        result = render_environment(self.loaded)
        self.loaded = result.loaded  # a local fleet's subnet, when chosen just now
        self.fingerprint = fingerprint(self.loaded, self.release_id, source=self.request.release_path)
        step.detail.update(files=[str(p) for p in result.files], fingerprint=self.fingerprint)
        from orchestrator.verify.preflight import preflight

        # before anything touches a host: environment file, heal policy, deploy model (exit 2 on failure)
        step.detail["preflight"] = {c.name: c.status for c in preflight(self.loaded)}

    def gates(self, step: StepHandle) -> None:
        """The release gates; GatesFailed (exit 1, the findings listed) refuses the release here."""
        report = gates_step(step, self.loaded, self.request.gate_request, command="up", argv=self.request.argv,
                            on_result=self.on_gate)
        self.gates_results = [g.as_dict() for g in report.gates]

    def provision(self, step: StepHandle) -> None:
        from orchestrator.fleet.provision import provision

        outcome = provision(self.loaded, confirm=self.request.confirm, on_progress=self.on_terraform)
        if not outcome.applied and outcome.plan.changes:
            raise UsageError(f"provisioning {self.loaded.name} was not confirmed; nothing was changed")
        step.detail.update(applied=outcome.applied, plan_sha256=outcome.plan.plan_sha256,
                           summary=outcome.plan.summary.as_dict(),
                           host_actions=[a.as_dict() for a in outcome.host_actions])
        for action in outcome.host_actions:
            self.info(f"  {action.host}: {action.action}: {action.detail}")
        step.run.set_plan(outcome.plan.plan_sha256)

    def inventory(self, step: StepHandle) -> None:
        from orchestrator.fleet.inventory import hosts_from_inventory, load_inventory

        path = self.loaded.paths.inventory
        hosts = hosts_from_inventory(load_inventory(path))
        if not any("app" in h.groups for h in hosts):
            raise OrchestratorError(f"{path}: no host in group app after provisioning")
        step.detail["hosts"] = {h.name: {"address": h.address, "groups": list(h.groups)} for h in hosts}

    def monitoring(self, step: StepHandle) -> None:
        from orchestrator.fleet.inventory import hosts_from_inventory, load_inventory

        hosts = hosts_from_inventory(load_inventory(self.loaded.paths.inventory))
        if not self.loaded.env.monitoring.enabled or not any("monitoring" in h.groups for h in hosts):
            step.detail["skipped"] = "monitoring disabled or no monitoring host"
            return
        from orchestrator.monitoring.files import deploy_monitoring

        deployment = deploy_monitoring(self.loaded, tuned=self.request.tuned)
        step.detail["directory"] = str(deployment.files.directory)

    def backup(self, step: StepHandle) -> None:
        if self.request.release_path is None:
            step.detail["skipped"] = "no release to deploy"
            return
        from orchestrator.release.backup import create_backup
        from orchestrator.release.transitions import HostTransitions

        result = create_backup(self.loaded, tuned=self.request.tuned)
        step.detail["backup"] = result.id
        # the journal's per-host state machine starts here: every app host is backed_up
        HostTransitions.for_run(step.run, release=self.release_id).backed_up(
            result.id, [(h.host, h.release_id) for h in result.hosts])

    def deploy(self, step: StepHandle) -> None:
        if self.request.release_path is None:
            step.detail["skipped"] = "no --release given: hosts keep their release"
            return
        from orchestrator.config.secrets import load_secrets
        from orchestrator.release.artifact import prepare_release
        from orchestrator.release.service import ReleaseService

        release = self.release
        if release is None or not release.binary.is_file():
            # a resumed run's artifact is gone; this run's gates passed already
            release = prepare_release(self.loaded, self.request.release_path, sha256=self.request.sha256,
                                      version=self.request.version, run_tests=False)
        service = ReleaseService(self.loaded, info=self.info, on_event=self.on_host_event)
        # staged -> switched -> verified (or failed -> rolled_back) per host, live, from backed_up;
        # `canary` is the canary by weight behind an LB, the canary hosts without one
        outcome = service.deploy_for_up(step, release, secrets=load_secrets(self.loaded), tuned=self.request.tuned)
        self.release_id = outcome.release or self.release_id

    def lb(self, step: StepHandle) -> None:
        """Configure the load balancer (backends: the app hosts, weights from traffic.json)."""
        from orchestrator.traffic.lb import configure_lb, has_lb_host
        from orchestrator.traffic.state import read_state

        if not has_lb_host(self.loaded):
            step.detail["skipped"] = "no load-balancer host"
            return
        result = configure_lb(self.loaded, tuned=self.request.tuned)
        step.detail.update(changed=result.changed, weights=read_state(self.loaded).weights)

    def verify(self, step: StepHandle) -> None:
        from orchestrator.release.probe import fleet_status

        fleet = fleet_status(self.loaded)
        self.status = fleet.as_dict()
        expected = self.release_id
        if expected is None and all(h.release is None for h in fleet.hosts):
            # infrastructure only (no --release, nothing deployed yet): nothing to verify on hosts
            step.detail.update(release=None, hosts=len(fleet.hosts), note="no release deployed yet")
            return
        unhealthy = [h.name for h in fleet.hosts if not h.healthy]
        if unhealthy:
            raise VerifyFailed(f"unhealthy after the run: {', '.join(unhealthy)}")
        from orchestrator.traffic.lb import verify_split

        # Behind a load balancer the hosts that get traffic must be on the release; after blue-green
        # the idle colour keeps the old one on purpose (what `orchestrate rollback` switches back to).
        behind_lb = verify_split(self.loaded, {h.name: h.release for h in fleet.hosts}, expected)
        if behind_lb is not None:
            problem, split = behind_lb
            if problem:
                raise VerifyFailed(problem)
            step.detail.update(release=split["release"], hosts=len(fleet.hosts), traffic=split)
            return
        releases = {h.release for h in fleet.hosts}
        if expected is not None and releases != {expected}:
            raise VerifyFailed(f"the fleet is on {', '.join(sorted(str(r) for r in releases))}, expected {expected}")
        step.detail.update(release=fleet.release, hosts=len(fleet.hosts))


def _is_noop(stages: _Stages, journal: Journal) -> bool:
    """Whether the last completed up had the same fingerprint and the fleet still matches it."""
    previous = last_completed_up(journal)
    if previous is None:
        return False
    if operator_skipped_gates(previous) - set(stages.request.skip_gates):
        return False  # the gates an operator skipped last time run now
    if stages.request.release_path is not None:
        stages.release_id = peek_release_id(stages.request.release_path, sha256=stages.request.sha256,
                                            version=stages.request.version)
        if previous.release != stages.release_id:
            return False
    else:
        stages.release_id = previous.release
    stages.loaded = render_environment(stages.loaded).loaded
    stages.fingerprint = fingerprint(stages.loaded, stages.release_id, source=stages.request.release_path)
    if _recorded_fingerprint(previous) != stages.fingerprint:
        return False
    stages.carried = noop_details(previous, stages.fingerprint)
    inventory = stages.loaded.paths.inventory
    if not inventory.exists():
        return False
    if stages.loaded.env.target == "local":
        # a host whose process died (or only its launcher) is invisible to Terraform and to a cached
        # status: look first
        from orchestrator.fleet.local.terraform import fleet_for

        local, specs = fleet_for(stages.loaded)
        if any(host.state != "running" or host.launcher != "alive" for host in local.status(specs)):
            return False
    from orchestrator.release.probe import fleet_status

    try:
        fleet = fleet_status(stages.loaded)
    except OrchestratorError:
        return False
    stages.status = fleet.as_dict()
    healthy = all(h.healthy for h in fleet.hosts)
    from orchestrator.traffic.lb import LoadBalancer, check_split, has_lb_host

    if has_lb_host(stages.loaded):
        # Behind a load balancer, as the verify step judges it: the hosts that get traffic are on
        # the release, an idle colour (after blue-green) keeps one of its own.
        try:
            weights = {name: int(s.get("weight", 0)) for name, s in LoadBalancer(stages.loaded).stats().items()}
        except OrchestratorError:
            return False  # an LB not configured yet (or down): the lb step has work to do
        problem, _ = check_split({h.name: h.release for h in fleet.hosts}, weights, stages.release_id)
        return healthy and problem is None
    on_release = stages.release_id is None or all(h.release == stages.release_id for h in fleet.hosts)
    return healthy and on_release


def up(
    loaded: LoadedEnvironment,
    request: UpRequest,
    *,
    info: Info | None = None,
    on_terraform: Callable[[Any], None] | None = None,
    on_host_event: Callable[[Any], None] | None = None,
    on_gate: Callable[[GateResult], None] | None = None,
) -> UpResult:
    """Run (or resume) `up` for `loaded`; see the module docstring."""
    from orchestrator.fleet.provision import needs_confirmation

    say = info or (lambda message: None)
    check_skips(loaded, request.gate_request)  # before the lock: a refused --skip-gate changes nothing
    # A protected environment without a terminal and without --yes is refused before the lock,
    # the journal or any host is touched.
    must_confirm = needs_confirmation(loaded, action="up", yes=request.yes, interactive=request.interactive)
    if must_confirm and request.confirm is None:
        raise UsageError(f"environment {loaded.name!r} is protected: confirm interactively or pass --yes")
    confirm = request.confirm if must_confirm else None
    stages = _Stages(loaded=loaded, request=_with_confirm(request, confirm), info=say, on_terraform=on_terraform,
                     on_host_event=on_host_event, on_gate=on_gate)
    with _publish_delivery_metrics(loaded, say) as ran, \
            locked_run(coordination_for(loaded), command="up", argv=request.argv, steps=STEPS, resume=request.resume,
                       wait=request.lock_wait, on_wait=say, env=loaded.name, release=None) as session:
        ran.append(True)
        run = session.run
        resumed_at: str | None = None
        if session.resume_point is not None:
            # no step left: it died after verify, before the run was marked completed
            resumed_at = session.resume_point.step or END
            _restore_from_journal(stages, session.resume_point.run)
        if resumed_at is None and not request.force and _is_noop(stages, session.journal):
            say("nothing changed since the last run and every host is healthy on its release: done")
            for name in STEPS:
                run.skip(name, "no-op: nothing changed", stages.carried.get(name))
            if stages.release_id:
                run.set_release(stages.release_id)
            noop = True
        else:
            if resumed_at is not None:
                say(f"resuming run {run.id} at step {resumed_at}")
            _execute(run, stages, say)
            noop = False
        ran.append(not noop)
        record = run.record()
        # the render step carries the fingerprint a later no-op check compares with
        steps = [s.as_dict() for s in record.steps]
    final = session.final
    return UpResult(env=loaded.name, run_id=run.id, noop=noop, release=stages.release_id or record.release,
                    steps=steps, status=stages.status, resumed_at=resumed_at,
                    duration=final.duration if final else None, gates=stages.gates_results)


@contextlib.contextmanager
def _publish_delivery_metrics(loaded: LoadedEnvironment, say: Info) -> Iterator[list[bool]]:
    """After a run that did something (not a no-op, not refused by the lock), once its lock is
    released: the delivery metrics on the monitoring host, best effort. The block appends True
    when the run started and False when it turned out a no-op."""
    ran: list[bool] = []
    try:
        yield ran
    except Exception:
        if ran and all(ran):
            publish_after_run(loaded, say)
        raise
    if ran and all(ran):
        publish_after_run(loaded, say)


def _execute(run: Any, stages: _Stages, say: Info) -> None:
    """Run every step not done yet, in order, each inside its journal step."""
    crash_before = os.environ.get(CRASH_BEFORE_ENV)
    for name in STEPS:
        if run.is_done(name):
            continue
        if crash_before == name:
            os.kill(os.getpid(), signal.SIGKILL)
        say(f"[bold]{name}[/bold]")
        with run.step(name) as handle:
            getattr(stages, name)(handle)
    if crash_before == END:
        os.kill(os.getpid(), signal.SIGKILL)


def _restore_from_journal(stages: _Stages, record: RunRecord) -> None:
    """What the steps a resumed run passes over had found: the release (build), the fingerprint.

    Without it a run resumed after its build would verify the fleet against no release at all.
    """
    details = {s.name: s.detail or {} for s in record.steps if s.state in ("completed", "skipped")}
    build = details.get("build", {})
    stages.release_id = record.release or build.get("release") or stages.release_id
    if build.get("binary"):
        stages.staged_binary = Path(str(build["binary"]))
        if stages.request.release_path is not None and build.get("release") and build.get("sha256"):
            rid = str(build["release"])
            # the staged record knows a bundle's archive too; without it, the binary of the build step
            stages.release = staged_release(stages.loaded, rid) or Release(
                id=rid, version=rid.rsplit("-", 1)[0], sha256=str(build["sha256"]), binary=stages.staged_binary,
                source=stages.request.release_path)
    if details.get("render", {}).get("fingerprint"):
        stages.fingerprint = str(details["render"]["fingerprint"])
    stages.gates_results = list(details.get("gates", {}).get("gates") or [])


def _with_confirm(request: UpRequest, confirm: Confirm | None) -> UpRequest:
    from dataclasses import replace

    return replace(request, confirm=confirm)


def dumps(result: UpResult) -> str:
    return json.dumps(result.as_dict(), indent=2, default=str)
