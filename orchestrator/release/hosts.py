"""Deploy, roll back and report releases of the service on an environment's app hosts.

A deploy stages the release (orchestrator.release.artifact), then runs playbooks/deploy.yml: per host,
the role's setup tasks, the binary copy and one call of the `rust_release` module that
switches, restarts, gates on health and switches back by itself on failure. When every host's
setup is the recorded one (a release change), the same calls run without a playbook
(orchestrator.release.direct), as do a rollback and the restore. When any host fails its gate the
rollout stops, and every host that had already switched in this run is put back on the release it
had before (a per-host target), so the fleet ends on one release. The outcome is exit 3
(HealthGateFailed) when that restore left every host healthy.

With `transitions` (HostTransitions, e.g. on the run journal), every app host's moves through
the deployment state machine (orchestrator.models.process) are recorded as they happen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.secrets import SECRETS_VAR
from orchestrator.config.types import parse_duration
from orchestrator.errors import UsageError
from orchestrator.files import digest_files
from orchestrator.fleet.inventory import Host, app_hosts
from orchestrator.fleet.playbooks import run_env_playbook, unreachable_hint
from orchestrator.ids import require_release_id
from orchestrator.release.direct import (
    ROLE,
    Call,
    ReleaseChange,
    cleanup_call,
    direct_enabled,
    readiness,
    release_calls,
    rollout_batches,
    run_release_calls,
    run_sessions,
    stop_rule,
    switch_params,
)
from orchestrator.release.results import (
    CLEANUP_TASK,
    MODULE,
    EventSink,
    GateFailedRestored,
    ReleaseInterrupted,
    ReleaseRun,
    ReleaseRunError,
    outcomes,
    previous_to_restore,
    to_restore,
)
from orchestrator.release.signing import Staged, sealed_for_shipping, signing_vars
from orchestrator.release.transitions import HostTransitions, _checked
from orchestrator.tools.ansible import HostSummary, PlaybookInterrupted, PlaybookResult, new_run_id

if TYPE_CHECKING:
    from orchestrator.release.artifact import Release

Strategy = Literal["rolling", "canary"]


LineSink = Callable[[str], None]


@dataclass(frozen=True)
class DeployRequest:
    """What `orchestrate deploy` asks for."""

    release_path: Path | str
    """A binary, a cargo project, a bundle or a URL (orchestrator.release.artifact)."""
    strategy: Strategy | None = None
    """None: the environment's rollout.strategy."""
    tuned: bool = True
    secret_vars: Mapping[str, Any] = field(default_factory=dict)
    """The service's secret environment (NAME: value, e.g. from orchestrator.config.secrets.load_secrets):
    it reaches only the EnvironmentFile on the hosts, never a file on the controller."""
    build_env: Mapping[str, str] | None = None
    limit: str | None = None
    """Ansible host pattern the deploy is limited to (blue-green: the idle colour's hosts)."""
    prepared: Release | None = None
    """The release already built and staged from `release_path` (not prepared a second time)."""
    sha256: str | None = None
    """--sha256: required for a URL, checked for a file."""
    version: str | None = None
    """--version: the release's version, whatever the artifact says."""


def limited_hosts(hosts: list[Host], limit: str | None) -> list[Host]:
    """The hosts a run limited to `limit` (host names separated by commas or colons) works on (pure)."""
    if not limit:
        return hosts
    names = {n.strip() for n in limit.replace(":", ",").split(",") if n.strip()}
    return [h for h in hosts if h.name in names]


def role_vars(loaded: LoadedEnvironment, evidence_dir: Path | None, *, signers: bool = True) -> dict[str, Any]:
    """Inputs of roles/rust_service from the environment (never a secret).

    The same for every action (deploy, rollback, restore, status): a rollback checks and runs the
    executable `rust_service_binary` of the release it returns to, with the same command line.
    With `signers` (every switch: deploy, rollback, the restore after a failed deploy, heal), the
    public keys the hosts verify a release's signed manifest with (orchestrator.release.signing);
    without them a rollback would switch to a release directory without checking it.
    """
    service = loaded.env.service
    return {
        **(signing_vars(loaded) if signers else {}),
        "rust_service_name": service.name,
        "rust_service_binary": service.effective_binary,
        # data, not templates (every extra var reaches Ansible marked unsafe: tools/ansible.py
        # unsafe_yaml): each argument reaches the service as written
        "rust_service_args": list(service.args),
        "rust_service_hooks": service.hooks.as_role_input(),
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


def setup_fingerprint(loaded: LoadedEnvironment, inputs: Mapping[str, Any]) -> str:
    """sha256 over what the role's setup tasks (user, directories, signing keys, unit) depend on:
    the role inputs `inputs` (role_vars: no release, no secret) and the role's own files.

    A host that recorded this fingerprint after its last setup, with its unit and signing keys
    unchanged since, skips those tasks (roles/rust_service/tasks/setup.yml); a change to any input,
    to a task, template or module of the role, runs them again. Inputs the setup does not read
    (health, hooks) are in it too: a change there costs one full setup, never a missed one.
    """
    role_dir = loaded.project_dir / "roles" / ROLE
    body = {key: value for key, value in inputs.items() if key != "rust_service_evidence_dir"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
    digest.update(b"\0" + digest_files(role_dir.rglob("*"), role_dir).encode())
    return digest.hexdigest()


def release_vars(release: Release) -> dict[str, Any]:
    """The role's release inputs: the staged executable, or the bundle's archive (unpacked on the host
    under releases/<id>/) with the sha256 of the executable inside it."""
    return {
        "rust_service_release_id": release.id,
        "rust_service_release_version": release.version,
        "rust_service_release_sha256": release.sha256,
        "rust_service_release_binary": "" if release.archive is not None else str(release.binary),
        "rust_service_release_archive": str(release.archive) if release.archive is not None else "",
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


"""Records one host's move `(host, to_state, release, detail)`, e.g. in the run journal
(`journal_sink`); raises (JournalError) to refuse a move the state machine does not allow."""


"""Which playbook run drives the moves: deploy.yml, the fleet restore after a failed deploy, or
`orchestrate rollback`."""


def _run(loaded: LoadedEnvironment, playbook: str, extra_vars: Mapping[str, Any], *, tuned: bool,
         run_id: str, secret_vars: Mapping[str, Any] | None = None,
         on_event: EventSink | None = None, limit: str | None = None) -> PlaybookResult:
    # deploy/rollback/status are tested under mitogen (fewer round trips per module call, the
    # biggest lever after fewer module calls); ORCHESTRATE_ANSIBLE_MITOGEN=0 falls back to plain Ansible
    return run_env_playbook(loaded, playbook, extra_vars, tuned=tuned, run_id=run_id, secret_vars=secret_vars,
                            on_event=on_event, limit=limit, mitogen=True)


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
    hosts = limited_hosts(app_hosts(loaded), request.limit)
    strategy: Strategy = request.strategy or loaded.env.rollout.host_strategy
    rollout = strategy_vars(loaded, strategy, [h.name for h in hosts])
    release = request.prepared
    if release is None:
        from orchestrator.release.artifact import prepare_release  # only a deploy prepares one

        release = prepare_release(loaded, request.release_path, sha256=request.sha256, version=request.version,
                                  on_output=on_output,
                                  build_env=dict(request.build_env) if request.build_env else None)
    # the signed manifest, checked against the staged files before any host is touched
    sealed = sealed_for_shipping(loaded, Staged(id=release.id, version=release.version,
                                                directory=release.binary.parent, source=release.source))
    if transitions is not None:
        transitions.release = release.id
    if before_ship is not None:
        before_ship()  # e.g. the backup: only once the release was accepted, before any host changes
    if transitions is not None:
        transitions.require([h.name for h in hosts], "deploy")
    run_id = new_run_id()
    evidence_dir = loaded.paths.evidence(run_id)
    inputs = role_vars(loaded, evidence_dir)
    extra = {**inputs, **release_vars(release), **sealed.role_vars(), **rollout,
             "rust_service_setup_fingerprint": setup_fingerprint(loaded, inputs)}
    events = transitions.events("deploy", on_event) if transitions is not None else on_event
    change = ReleaseChange(release_id=release.id, version=release.version, sha256=release.sha256,
                           binary=release.binary, manifest=sealed.manifest, signature=sealed.signature)
    ready = readiness(loaded, hosts, extra["rust_service_setup_fingerprint"], change) \
        if direct_enabled(request.tuned) and release.archive is None and hosts else None
    if ready is not None and ready.all_current:
        # every host's setup is the recorded one: a release change is the environment file, one
        # transfer and the gated switch per host, without Ansible
        env = {**loaded.env.service.config, **request.secret_vars}
        payload = release.binary.read_bytes() if not all(ready.has_binary.values()) else b""
        shipping, checking = (release_calls(loaded, change, env, payload=p) for p in (payload, b""))
        result = _deploy_direct(loaded, hosts, rollout,
                                lambda host: checking if ready.has_binary.get(host.name) else shipping,
                                run_id=run_id, evidence_dir=evidence_dir, on_event=events)
    else:
        secret_vars = {SECRETS_VAR: dict(request.secret_vars)} if request.secret_vars else {}
        result = _interruptible(lambda: _run(
            loaded, "deploy.yml", extra, tuned=request.tuned, run_id=run_id, secret_vars=secret_vars,
            limit=request.limit, on_event=events))
    return _checked(transitions, lambda: _conclude(
        loaded, "deploy", result, release.id, hosts, tuned=request.tuned, evidence_dir=evidence_dir,
        release=release, strategy=strategy, on_event=on_event, transitions=transitions))


def rollback(loaded: LoadedEnvironment, to: str | None = None, *, tuned: bool = True,
             on_event: EventSink | None = None, transitions: HostTransitions | None = None,
             limit: str | None = None) -> ReleaseRun:
    """Switch every app host (or those of `limit`, names separated by commas) to its previous
    release, or to release `to`, health-gated.

    `transitions` records idle -> rolled_back (or failed) per host as the rollback goes.
    """
    if to is not None:
        require_release_id(to, "--to")
    hosts = limited_hosts(app_hosts(loaded), limit)
    if transitions is not None:
        transitions.release = to
        transitions.require([h.name for h in hosts], "rollback")
    run_id = new_run_id()
    evidence_dir = loaded.paths.evidence(run_id)
    events = transitions.events("rollback", on_event) if transitions is not None else on_event
    if direct_enabled(tuned):
        # nothing is copied: one rust_release call per host, over direct sessions
        params = switch_params(loaded, to)
        result = run_release_calls(loaded, hosts, lambda host: params, run_id=run_id, label="rollback",
                                   evidence_dir=evidence_dir, on_event=events)
    else:
        extra = {**role_vars(loaded, evidence_dir), "rollback_to": to or ""}
        result = _interruptible(lambda: _run(loaded, "rollback.yml", extra, tuned=tuned, run_id=run_id, limit=limit,
                                             on_event=events))
    # the fleet restore after a failed rollback is not a deploy's restore: the state machine has no
    # move for undoing a rollback (rolled_back is final), so the restore's events drive nothing
    return _checked(transitions, lambda: _conclude(loaded, "rollback", result, to, hosts, tuned=tuned,
                                                   evidence_dir=evidence_dir, on_event=on_event, transitions=None))


def _interruptible(run: Callable[[], PlaybookResult]) -> PlaybookResult:
    """The playbook's result, also when SIGINT or SIGTERM stopped it (`interrupted_by` says so):
    `_conclude` puts the hosts that had switched back before the interrupt goes on."""
    try:
        return run()
    except PlaybookInterrupted as stopped:
        return stopped.run


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
    # a host that reported something other than a release id fails the run, whatever Ansible said
    bad_reports = [h for h in found if h.bad_report]
    if not bad_reports and (result.ok or (cleanup_failures and len(cleanup_failures) == len(result.failures)
                                          and not any(h.failed for h in found))):
        # every host passed its gate; a host whose old releases could not be removed afterwards
        # (unreachable for a moment, a disk error) keeps them until the next deploy
        run.state = "deployed" if any(h.changed for h in found) else "unchanged"
        run.notes = [f"old releases not removed on {f.host}: {f.message}" for f in cleanup_failures]
        return run

    run.state = "failed"
    gate_failures = [h for h in found if h.failed and not h.bad_report and (h.rolled_back or h.healthy is False)]
    restore = to_restore(found, target)
    if restore:
        run.restored_hosts = restore
        run.restore = _restore(loaded, restore, previous_to_restore(found, restore), hosts, tuned=tuned,
                               run_id=f"{result.run_id}-restore", evidence_dir=evidence_dir,
                               on_event=transitions.events("restore", on_event) if transitions is not None
                               else on_event)
    if result.interrupted_by is not None:
        raise ReleaseInterrupted(_interrupted_message(action, target, result.interrupted_by, run), run)
    failures = "; ".join(filter(None, [*(h.message for h in bad_reports), result.summary_line()])) \
        or f"ansible-playbook exited with {result.rc} ({result.status})"
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
    down = result.unreachable_hosts()
    raise ReleaseRunError(f"{action} failed: {failures}", run, hint=unreachable_hint(loaded, down) if down else None)


def _deploy_direct(loaded: LoadedEnvironment, hosts: list[Host], rollout: Mapping[str, Any],
                   calls_of: Callable[[Host], list[Call]], *, run_id: str, evidence_dir: Path,
                   on_event: EventSink | None) -> PlaybookResult:
    """deploy.yml without Ansible: the batches and their stop rule, then (every host passed) the
    cleanup of old releases, whose failures are notes, as the playbook's last play."""
    canary = list(rollout["deploy_canary"])
    result = run_sessions(loaded, rollout_batches(hosts, canary, rollout["deploy_batch"]), calls_of, run_id=run_id,
                          label="deploy", evidence_dir=evidence_dir, on_event=on_event,
                          stop=stop_rule(canary, int(rollout["deploy_max_fail_percentage"])))
    if not result.ok or result.interrupted_by is not None:
        return result
    cleanup = run_sessions(loaded, [hosts], lambda host: [cleanup_call(loaded)], run_id=f"{run_id}-cleanup",
                           label="deploy cleanup", on_event=on_event)
    result.results += cleanup.results
    result.failures += cleanup.failures
    for host, counts in cleanup.hosts.items():
        summary = result.hosts.setdefault(host, HostSummary())
        for name, value in counts.as_dict().items():
            setattr(summary, name, getattr(summary, name) + value)
    result.duration += cleanup.duration
    result.interrupted_by = cleanup.interrupted_by
    if not cleanup.ok:
        result.rc, result.status = cleanup.rc, cleanup.status
    return result


def _restore(loaded: LoadedEnvironment, targets: Mapping[str, str], previous: Mapping[str, str], hosts: list[Host],
             *, tuned: bool, run_id: str, evidence_dir: Path, on_event: EventSink | None) -> PlaybookResult:
    """Put each host of `targets` back on its release (and its `previous` link on `previous`'s)."""
    if direct_enabled(tuned):
        shared = switch_params(loaded, None)
        return run_release_calls(loaded, [h for h in hosts if h.name in targets],
                                 lambda host: {**shared, "release_id": targets[host.name],
                                               "previous_id": previous[host.name]},
                                 run_id=run_id, label="restore", evidence_dir=evidence_dir, on_event=on_event)
    extra = {**role_vars(loaded, evidence_dir), "rollback_targets": dict(targets), "rollback_previous": dict(previous),
             "rollback_hosts": ",".join(sorted(targets))}
    return _run(loaded, "rollback.yml", extra, tuned=tuned, run_id=run_id, on_event=on_event)


def _interrupted_message(action: str, target: str | None, signal_name: str, run: ReleaseRun) -> str:
    """What an operator needs after a Ctrl-C: what stopped, and where every host is now."""
    stopped = f"{action} of {target}" if target else action
    if run.restore is not None and not run.restore.ok:
        return (f"{stopped} stopped by {signal_name}; putting back the hosts that had switched failed, the fleet "
                f"may be on several releases: {run.restore.summary_line() or run.restore.status}")
    if run.restored_hosts:
        back = ", ".join(f"{host} -> {release}" for host, release in sorted(run.restored_hosts.items()))
        return f"{stopped} stopped by {signal_name}; the hosts that had switched are back: {back}"
    return f"{stopped} stopped by {signal_name}; no host had switched"

