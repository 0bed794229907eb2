"""The notification of a release's outcome: which hosts it touched and what they ran before (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.notify.events import Notification, release_notification
from orchestrator.release.results import ReleaseRun

if TYPE_CHECKING:  # a type only: a host-level release never loads the traffic release
    from orchestrator.release.traffic import TrafficRelease


def touched(run: ReleaseRun | None) -> tuple[list[str], str | None]:
    """The hosts a host-level run worked on, and the one release they all ran before (None: none or several)."""
    if run is None:
        return [], None
    before = {h.release_before for h in run.hosts if h.release_before}
    return [h.name for h in run.hosts], before.pop() if len(before) == 1 else None


def outcome_notification(event: str, *, env: str, release: str | None, state: str, run_id: str | None,
                         strategy: str, hosts_run: ReleaseRun | None, traffic: TrafficRelease | None, user: str,
                         error: str = "") -> Notification:
    """The notification of a deploy, rollback or failed gate from what ran (the host-level run, or the
    traffic release and the deploy of its colour)."""
    hosts, before = touched(hosts_run if hosts_run is not None else traffic.deploy if traffic is not None else None)
    if traffic is not None and not hosts:
        hosts = sorted(traffic.weights)  # a switch back moves weights only: every app host behind the LB
    return release_notification(event, env, release=release, previous_release=before, state=state, run=run_id,
                                hosts=hosts, user=user, error=error, strategy=strategy)
