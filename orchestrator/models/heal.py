"""The heal loop's last word on a remediation: decided on the present, not on the past.

An alert reaches the heal server, which waits for the environment lock (a deploy may hold it),
and only then looks again at what is true now. `judge` is that look, a pure function of
`Present` (what the heal server found after taking the lock); it returns why the remediation
must be dropped, or None to act. The heal server calls it for every remediation, and the
exhaustive deploy model (orchestrator.models.process.explore with `heal=True`) calls the same
function on every path, with alerts firing and clearing at any point and remediations taking the
lock between a deploy's crash and its resume or after its end.

A remediation is dropped when

1. a run moved the alert's host to another release since the alert arrived (the alert is about a
   release that is gone);
2. a run moved the host within the alert's window (`AlertRule.clears_in` plus `for` and the
   scrape and evaluation delays): what the alert measured is still, at least partly, the release
   before the move, e.g. the 500s of a gate that failed and restored the previous release. A
   problem that persists outlives the window, and Alertmanager sends it again (`repeat_interval`);
3. the alert no longer fires (or whether it fires cannot be told, or the journal cannot be read);
4. for a rollback: it would go past the floor (below).

The floor of a rollback remediation. The journal's newest run that moved releases decides
(`LastRun`, newest first; runs that changed nothing, such as a dropped remediation or a deploy of
what already served, do not count):

- a deploy (or `up`) that completed moved the fleet forward: the remediation may undo it, going
  back to the release that deploy replaced -- one step, never two;
- a run that went back -- a deploy that failed its gate and restored the previous release
  (exit 3), a rollback, a restore, an earlier remediation -- left a release serving that a
  remediation must not go past: it is refused (a deploy of v3 that failed its gate and restored
  v2 leaves v2 as the floor; its stale HighErrorRate cannot take the fleet to v1);
- a run that did not finish (interrupted, still running elsewhere, or failed without restoring
  every host) leaves the fleet to the operator or `orchestrate resume`: refused;
- no such run in the journal: nothing the remediation knows it may undo: refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RunKind(StrEnum):
    """How the journal's newest release-moving run left the fleet."""

    FORWARD = "forward"
    """A deploy (or up) that completed: the release it deployed serves."""
    BACKWARD = "backward"
    """A run that went back and finished: a gate failure that restored the hosts, a rollback, a
    restore, a remediation."""
    UNFINISHED = "unfinished"
    """Interrupted, still running, or failed without restoring every host."""


@dataclass(frozen=True)
class LastRun:
    """The journal's newest run that moved releases."""

    id: str
    command: str
    kind: RunKind
    release: str | None = None
    """The release it left serving, when the journal records it."""


class Drop(StrEnum):
    """Why a remediation was dropped after the lock (the audit log's `dropped` entries carry it)."""

    RESOLVED = "resolved"
    UNCONFIRMED = "unconfirmed"
    HOST_MOVED = "host-moved"
    WINDOW = "window-covers-move"
    UNFINISHED_RUN = "unfinished-run"
    FLOOR = "past-floor"
    NOTHING_TO_UNDO = "nothing-to-undo"


@dataclass(frozen=True)
class Present:
    """What the heal server found after taking the lock, for one alert and its remediation."""

    action: str
    """restart | rollback"""
    firing: bool | None
    """Whether the alert fires now (None: it could not be asked)."""
    host_moved: bool | None
    """Whether a run moved the alert's host to another release since the alert arrived (None: unknown)."""
    window_covers_move: bool | None
    """Whether the host's newest release move lies within the alert's window (None: unknown)."""
    last_run: LastRun | None = None
    """The journal's newest release-moving run (read for rollbacks)."""
    detail: str = ""
    """What the facts were read from, for the audit log (e.g. the run that moved the host)."""


def judge(present: Present) -> tuple[Drop, str] | None:
    """(why, explanation) when the remediation must be dropped; None when it may act.

    The journal's facts are judged before whether the alert fires, so that the heal server asks
    Prometheus or Alertmanager only about an alert the journal does not already make stale.
    """
    if present.host_moved is None or present.window_covers_move is None:
        return Drop.UNCONFIRMED, "could not read the host's releases from the journal" + _also(present)
    if present.host_moved:
        return Drop.HOST_MOVED, "a run moved the host to another release since the alert arrived" + _also(present)
    if present.window_covers_move:
        return Drop.WINDOW, ("the alert's window still covers the host's last release move, so it measures "
                             "the release before it too" + _also(present))
    if present.firing is None:
        return Drop.UNCONFIRMED, "could not ask whether the alert still fires" + _also(present)
    if not present.firing:
        return Drop.RESOLVED, "the alert no longer fires"
    if present.action != "rollback":
        return None
    last = present.last_run
    if last is None:
        return Drop.NOTHING_TO_UNDO, "the journal records no completed deploy a rollback could undo"
    if last.kind is RunKind.UNFINISHED:
        return Drop.UNFINISHED_RUN, (f"run {last.id} ({last.command}) did not finish: the fleet is left to the "
                                     f"operator or `orchestrate resume {last.id}`")
    if last.kind is RunKind.BACKWARD:
        left = f"release {last.release}" if last.release else "the release it restored"
        return Drop.FLOOR, (f"run {last.id} ({last.command}) went back and left {left} serving; a rollback "
                            "would go past it")
    return None


def _also(present: Present) -> str:
    return f" ({present.detail})" if present.detail else ""
