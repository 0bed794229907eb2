"""What a release run did: per-host outcomes of the rust_release module, the run's summary, the
fleet's status, and the errors that carry them (gate failed and restored: exit 3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.errors import HealthGateFailed, Interrupted, OrchestratorError
from orchestrator.ids import is_release_id, shown
from orchestrator.tools.ansible import HostEvent, PlaybookResult, TaskResult

if TYPE_CHECKING:  # a type only: reading a run's results never needs the artifact's build tools
    from orchestrator.release.artifact import Release


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
    bad_report: bool = False
    """The host reported a release that is not a release id (the message says which): the value
    was dropped, the host counts as failed and is never restored from its own report."""

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


class ReleaseInterrupted(Interrupted):
    """SIGINT or SIGTERM stopped a deploy or rollback after the hosts that had switched were put
    back (exit 130); carries the run."""

    def __init__(self, message: str, run: ReleaseRun) -> None:
        super().__init__(message, result=run)
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
    """`orchestrate status ENV`: the contract shape (docs/contracts.md)."""

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


#: what each release field of rust_release's result means, for messages
REPORTED_RELEASES = {
    "release_before": "its release before the run", "release": "its release",
    "previous_release": "its previous release", "previous_before": "its previous release before the run",
}


def reported_release(host: str, res: Mapping[str, Any], key: str) -> tuple[str | None, str]:
    """A release id a host reported under `key`, checked: (the id or None, "" or the problem).

    A host reports what its `current`/`previous` links name; whoever controls the host controls
    that text. Only a whole-string release id is taken; anything else (a path, Jinja, a newline)
    is dropped and named in the problem, never passed on.
    """
    value = res.get(key)
    if not value:
        return None, ""
    if is_release_id(value):
        return str(value), ""
    what = REPORTED_RELEASES.get(key, key)
    return None, f"{host} reported {what} as {shown(value)}, which is not a release id (not used)"


def outcomes(results: list[TaskResult], addresses: Mapping[str, str]) -> list[HostOutcome]:
    """Per-host outcome of the rust_release calls of a run (the last call per host wins).

    A host whose report names something that is not a release id is failed, with the problem as
    its message (see `reported_release`).
    """
    last: dict[str, TaskResult] = {}
    for result in results:
        # the role's other phases call the module too (status, the cleanup after a rollout); a
        # skipped call says nothing
        if result.status != "skipped" and result.task != CLEANUP_TASK and result.result.get("state") != "cleanup":
            last[result.host] = result
    found = []
    for host, result in sorted(last.items()):
        res = result.result
        checked = {key: reported_release(host, res, key) for key in REPORTED_RELEASES}
        problems = [problem for _, problem in checked.values() if problem]
        failed = result.status in {"failed", "unreachable"} or bool(problems)
        found.append(HostOutcome(
            name=host, address=addresses.get(host, ""),
            release_before=checked["release_before"][0], release=checked["release"][0],
            previous_release=checked["previous_release"][0], switched=bool(res.get("switched")),
            rolled_back=bool(res.get("rolled_back")),
            healthy=res.get("healthy") if isinstance(res.get("healthy"), bool) else None,
            changed=bool(res.get("changed")), failed=failed,
            message="; ".join(problems) if problems else str(res.get("msg", "")) if failed else "",
            previous_before=checked["previous_before"][0], bad_report=bool(problems),
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


#: roles/rust_service tasks whose outcome moves a host: the binary copy (fetch.yml) and the one
#: rust_release call that switches, restarts and gates (release.yml)
STAGE_TASK_PREFIX = "Copy the release binary to the host"


RELEASE_TASK = "Switch to the release and pass the health gate"


#: deploy.yml's last play, after every host passed its gate: housekeeping, never the outcome
CLEANUP_TASK = "Remove releases beyond the ones to keep"


EventSink = Callable[[HostEvent], None]


MODULE = "rust_release"
