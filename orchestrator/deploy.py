"""Deploy, roll back and report releases of the service on an environment's app hosts.

A deploy stages the release (orchestrator.release), then runs playbooks/deploy.yml: per host,
the role's setup tasks, the binary copy and one call of the `rust_release` module that
switches, restarts, gates on health and switches back by itself on failure. When any host fails
its gate the rollout stops, and every host that had already switched in this run is put back on
the release it had before (playbooks/rollback.yml with a per-host target), so the fleet ends on
one release. The outcome is exit 3 (HealthGateFailed) when that restore left every host healthy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.config import LoadedEnvironment, parse_duration
from orchestrator.errors import AnsibleError, HealthGateFailed, OrchestratorError, UsageError
from orchestrator.inventory import Host, hosts_from_inventory, load_inventory
from orchestrator.release import Release, is_release_id, prepare_release
from orchestrator.secrets import SECRETS_VAR
from orchestrator.tools.ansible import HostEvent, PlaybookResult, PlaybookRun, TaskResult, new_run_id, run_playbook

Strategy = Literal["rolling", "canary"]
EventSink = Callable[[HostEvent], None]
LineSink = Callable[[str], None]

MODULE = "rust_release"
INVENTORY_FILE = "inventory.yml"


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "address": self.address, "release_before": self.release_before,
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
        # the role's other phases call the module too (status); a skipped call says nothing
        if result.status != "skipped":
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
        ))
    return found


def to_restore(hosts: list[HostOutcome], target: str | None) -> dict[str, str]:
    """Hosts that switched to `target` in this run, with the release each had before it."""
    return {
        h.name: h.release_before
        for h in hosts
        if not h.failed and h.switched and h.release_before and (target is None or h.release == target)
    }


def _opt(value: object) -> str | None:
    return str(value) if value else None


# --- the operations ------------------------------------------------------------------------------


def inventory_path(loaded: LoadedEnvironment) -> Path:
    """The environment's inventory, written by provisioning."""
    return loaded.state_dir / INVENTORY_FILE


def app_hosts(loaded: LoadedEnvironment) -> list[Host]:
    """The app hosts of the environment's inventory, sorted by name (Ansible's order)."""
    path = inventory_path(loaded)
    if not path.exists():
        raise UsageError(f"{loaded.name} has no inventory yet ({path}): run `orchestrate up {loaded.name}` first")
    hosts = [h for h in hosts_from_inventory(load_inventory(path)) if "app" in h.groups]
    if not hosts:
        raise UsageError(f"{path}: no hosts in group app")
    return hosts


def _playbook(loaded: LoadedEnvironment, name: str) -> Path:
    return loaded.project_dir / "playbooks" / name


def _run(loaded: LoadedEnvironment, playbook: str, extra_vars: Mapping[str, Any], *, tuned: bool,
         run_id: str, secret_vars: Mapping[str, Any] | None = None,
         on_event: EventSink | None = None, limit: str | None = None) -> PlaybookResult:
    return run_playbook(
        PlaybookRun(
            playbook=_playbook(loaded, playbook), inventory=inventory_path(loaded),
            project_dir=loaded.project_dir, runs_dir=loaded.state_dir / "runs",
            extra_vars=dict(extra_vars), secret_vars=dict(secret_vars or {}), tuned=tuned, run_id=run_id,
            limit=limit,
            # deploy/rollback/status are tested under mitogen (DESIGN.md: the biggest lever after
            # fewer module calls); ORCHESTRATE_ANSIBLE_MITOGEN=0 falls back to plain Ansible
            mitogen=True,
        ),
        on_event=on_event,
    )


def deploy(loaded: LoadedEnvironment, request: DeployRequest, *, on_event: EventSink | None = None,
           on_output: LineSink | None = None, before_ship: Callable[[], object] | None = None) -> ReleaseRun:
    """Deploy `request.release_path` to the app hosts of `loaded`, health-gated.

    Returns the run when every host passed its gate (state deployed, or unchanged when the
    release was already current everywhere). Raises GateFailedRestored (exit 3) when a gate
    failed and every host is back and healthy on its previous release, ReleaseRunError (exit 1)
    for anything else, UsageError / ReleaseError before any host is touched.
    """
    hosts = app_hosts(loaded)
    strategy: Strategy = request.strategy or loaded.env.rollout.strategy
    rollout = strategy_vars(loaded, strategy, [h.name for h in hosts])
    release = prepare_release(loaded, request.release_path, on_output=on_output,
                              build_env=dict(request.build_env) if request.build_env else None)
    if before_ship is not None:
        before_ship()  # e.g. the backup: only once the release was accepted, before any host changes
    run_id = new_run_id()
    evidence_dir = loaded.state_dir / "evidence" / run_id
    extra = {**role_vars(loaded, evidence_dir), **release_vars(release), **rollout}
    secret_vars = {SECRETS_VAR: dict(request.secret_vars)} if request.secret_vars else {}
    result = _run(loaded, "deploy.yml", extra, tuned=request.tuned, run_id=run_id,
                  secret_vars=secret_vars, on_event=on_event, limit=request.limit)
    return _conclude(loaded, "deploy", result, release.id, hosts, tuned=request.tuned, evidence_dir=evidence_dir,
                     release=release, strategy=strategy, on_event=on_event)


def rollback(loaded: LoadedEnvironment, to: str | None = None, *, tuned: bool = True,
             on_event: EventSink | None = None) -> ReleaseRun:
    """Switch every app host to its previous release, or to release `to`, health-gated."""
    if to is not None and not is_release_id(to):
        raise UsageError(f"--to {to!r} is not a release id such as 0.2.0-0123456789ab")
    hosts = app_hosts(loaded)
    run_id = new_run_id()
    evidence_dir = loaded.state_dir / "evidence" / run_id
    extra = {**role_vars(loaded, evidence_dir), "rollback_to": to or ""}
    result = _run(loaded, "rollback.yml", extra, tuned=tuned, run_id=run_id, on_event=on_event)
    return _conclude(loaded, "rollback", result, to, hosts, tuned=tuned, evidence_dir=evidence_dir,
                     on_event=on_event)


def _conclude(loaded: LoadedEnvironment, action: Literal["deploy", "rollback"], result: PlaybookResult,
              target: str | None, hosts: list[Host], *, tuned: bool, evidence_dir: Path,
              release: Release | None = None, strategy: str | None = None,
              on_event: EventSink | None = None) -> ReleaseRun:
    """Turn a run into a ReleaseRun; after a failure, put switched hosts back first."""
    addresses = {h.name: h.address for h in hosts}
    found = outcomes(result.results_of(MODULE), addresses)
    run = ReleaseRun(env=loaded.name, action=action, run_id=result.run_id, state="deployed", target=target,
                     hosts=found, run=result, evidence_dir=evidence_dir, release=release, strategy=strategy)
    if result.ok:
        run.state = "deployed" if any(h.changed for h in found) else "unchanged"
        return run

    run.state = "failed"
    gate_failures = [h for h in found if h.failed and (h.rolled_back or h.healthy is False)]
    restore = to_restore(found, target)
    if restore:
        run.restored_hosts = restore
        extra = {**role_vars(loaded, evidence_dir), "rollback_targets": restore,
                 "rollback_hosts": ",".join(sorted(restore))}
        run.restore = _run(loaded, "rollback.yml", extra, tuned=tuned, run_id=f"{result.run_id}-restore",
                           on_event=on_event)
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
