"""From a real deploy's host events and results to the deployment state machine's transitions
(orchestrator.release.transitions.HostTransitions), and journal refusals that must surface."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import HealthGateFailed
from orchestrator.models.process import HostState
from orchestrator.release.results import RELEASE_TASK, HostOutcome, ReleaseRun
from orchestrator.release.transitions import HostTransitions, TransitionRefused, _checked
from orchestrator.runs.journal import Journal, JournalError
from orchestrator.tools.ansible import HostEvent

COPY_TASK = "Copy the release binary to the host as {{ rust_service_release_id }}"
SETUP_TASK = "Install the systemd unit"
RESCUE_FAIL = "Fail naming the task that failed"
HOSTS = ["app-1", "app-2"]

Moves = list[tuple[str, str, str | None, dict[str, Any]]]


def recorder(moves: Moves) -> HostTransitions:
    def sink(host: str, state: str, release: str | None, detail: dict[str, Any]) -> None:
        moves.append((host, state, release, detail))

    return HostTransitions(sink=sink, release="0.2.0-0123456789ab")


def states(moves: Moves, host: str) -> list[str]:
    return [state for h, state, _, _ in moves if h == host]


def outcome(name: str, *, failed: bool = False, rolled_back: bool = False, healthy: bool | None = True,
            release: str = "0.1.0-aaaaaaaaaaaa") -> HostOutcome:
    return HostOutcome(name=name, address="10.0.0.1", release_before="0.1.0-aaaaaaaaaaaa", release=release,
                       previous_release=None, switched=not failed, rolled_back=rolled_back, healthy=healthy,
                       changed=True, failed=failed)


def backed_up(tracker: HostTransitions) -> None:
    tracker.backed_up("20261123T181500Z", [(h, "0.1.0-aaaaaaaaaaaa") for h in HOSTS])


def backed_up_deploy(moves: Moves) -> tuple[HostTransitions, Callable[[HostEvent], None]]:
    """A tracker of a deploy of HOSTS after their backup, and its event sink."""
    tracker = recorder(moves)
    backed_up(tracker)
    tracker.require(HOSTS, "deploy")
    return tracker, tracker.events("deploy")


def test_a_good_deploy_moves_every_host_along_the_forward_path() -> None:
    moves: Moves = []
    tracker, handle = backed_up_deploy(moves)
    for host in HOSTS:
        handle(HostEvent(host, SETUP_TASK, "changed"))
        handle(HostEvent(host, "Create the release directory", "skipped"))
        handle(HostEvent(host, COPY_TASK, "changed"))
    for host in HOSTS:
        handle(HostEvent(host, RELEASE_TASK, "changed"))
    tracker.after_run("deploy", [outcome(h) for h in HOSTS])
    tracker.check()
    for host in HOSTS:
        assert states(moves, host) == ["backed_up", "staged", "switched", "verified"]
    assert {release for _, _, release, _ in moves} == {"0.2.0-0123456789ab"}
    first = moves[0]
    assert first[3] == {"backup": "20261123T181500Z", "release_backed_up": "0.1.0-aaaaaaaaaaaa"}
    staged = next(m for m in moves if m[1] == "staged")
    assert staged[3] == {"task": COPY_TASK, "copied": True}


def test_a_failed_gate_is_failed_then_rolled_back_by_the_module_result() -> None:
    moves: Moves = []
    tracker, handle = backed_up_deploy(moves)
    for host in HOSTS:
        handle(HostEvent(host, COPY_TASK, "ok"))
    handle(HostEvent("app-1", RELEASE_TASK, "ok"))
    handle(HostEvent("app-2", RELEASE_TASK, "failed", "release 0.2.0 failed its health gate; 0.1.0 restored"))
    handle(HostEvent("app-2", RESCUE_FAIL, "failed", "Switch ...: failed"))  # the same host: no second move
    tracker.after_run("deploy", [outcome("app-1"), outcome("app-2", failed=True, rolled_back=True)])
    # the fleet restore puts app-1 (which had passed its gate) back
    tracker.events("restore")(HostEvent("app-1", RELEASE_TASK, "changed"))
    tracker.check()
    assert states(moves, "app-1") == ["backed_up", "staged", "switched", "verified", "rolled_back"]
    assert states(moves, "app-2") == ["backed_up", "staged", "failed", "rolled_back"]
    failed = next(m for m in moves if m[1] == "failed")
    assert failed[3]["message"].startswith("release 0.2.0 failed its health gate")
    assert moves[-1][3] == {"task": RELEASE_TASK, "by": "fleet restore"}


def test_a_host_that_could_not_restore_itself_stays_failed() -> None:
    moves: Moves = []
    tracker, handle = backed_up_deploy(moves)
    handle(HostEvent("app-1", COPY_TASK, "changed"))
    handle(HostEvent("app-1", RELEASE_TASK, "failed", "restored but NOT healthy"))
    handle(HostEvent("app-2", SETUP_TASK, "unreachable", "ssh: connect timed out"))
    tracker.after_run("deploy", [outcome("app-1", failed=True, rolled_back=True, healthy=False)])
    assert states(moves, "app-1") == ["backed_up", "staged", "failed"]
    assert states(moves, "app-2") == ["backed_up", "failed"]
    assert moves[-1][3]["status"] == "unreachable"


def test_a_failed_restore_leaves_the_host_failed() -> None:
    moves: Moves = []
    tracker = recorder(moves)
    tracker.states.update({"app-1": "verified"})
    tracker.hosts = {"app-1"}
    tracker.events("restore")(HostEvent("app-1", RELEASE_TASK, "failed", "release 0.1.0 is not on the host"))
    assert states(moves, "app-1") == ["failed"]


def test_the_rollback_verb_goes_from_idle_to_rolled_back_or_failed() -> None:
    moves: Moves = []
    tracker = recorder(moves)
    tracker.require(HOSTS, "rollback")
    handle = tracker.events("rollback")
    handle(HostEvent("app-1", RELEASE_TASK, "changed"))
    handle(HostEvent("app-2", RELEASE_TASK, "failed", "no previous release recorded"))
    assert states(moves, "app-1") == ["rolled_back"] and states(moves, "app-2") == ["failed"]
    assert moves[0][3] == {"task": RELEASE_TASK, "by": "rollback"}


def test_events_of_other_hosts_and_tasks_move_nothing() -> None:
    moves: Moves = []
    tracker = recorder(moves)
    backed_up(tracker)
    tracker.require(["app-1"], "deploy")
    handle = tracker.events("deploy")
    handle(HostEvent("mon-1", COPY_TASK, "changed"))  # not an app host of this run
    handle(HostEvent("app-1", SETUP_TASK, "ok"))
    handle(HostEvent("app-1", RELEASE_TASK, "skipped"))
    assert states(moves, "app-1") == ["backed_up"] and states(moves, "mon-1") == []


def test_a_resumed_deploy_records_only_what_is_new() -> None:
    """The interrupted deploy step runs again: app-1 passed its gate before the crash, app-2 was
    only staged (maybe switched on the host, the journal write lost)."""
    moves: Moves = []
    tracker = recorder(moves)
    tracker.states.update({"app-1": "verified", "app-2": "staged"})
    tracker.require(HOSTS, "deploy")
    handle = tracker.events("deploy")
    for host in HOSTS:
        handle(HostEvent(host, COPY_TASK, "ok"))
        handle(HostEvent(host, RELEASE_TASK, "ok"))
    assert [(h, s) for h, s, _, _ in moves] == [("app-2", "switched"), ("app-2", "verified")]


@pytest.mark.parametrize(("state", "reason"), [
    ("idle", "it has no backup in this run"),
    ("rolled_back", "this run already aborted on it"),
    ("failed", "this run already aborted on it"),
])
def test_a_deploy_that_cannot_go_forward_is_refused_before_any_host_is_touched(state: str, reason: str) -> None:
    moves: Moves = []
    tracker = recorder(moves)
    backed_up(tracker)
    tracker.states["app-2"] = state
    with pytest.raises(TransitionRefused, match=f"host app-2 is {state} in this run: {reason}"):
        tracker.require(HOSTS, "deploy")


def test_the_state_machine_refuses_before_the_sink_is_asked() -> None:
    moves: Moves = []
    tracker = recorder(moves)
    with pytest.raises(TransitionRefused, match="host app-1: illegal transition idle -> staged"):
        tracker.move("app-1", HostState.STAGED)
    assert moves == []


def test_a_journal_refusal_during_the_playbook_is_kept_and_raised_after_it(tmp_path: Path) -> None:
    """Raising inside ansible-runner's event handler would tear the run down half-way: the
    refusal is kept, nothing more is recorded, and it surfaces once the playbook is over."""
    # a journal whose state machine refuses staged -> switched (so the refusal is the journal's)
    allowed = {("idle", "backed_up"), ("backed_up", "staged"), ("switched", "verified")}
    with Journal(tmp_path / "journal.db", env="dev", transitions=allowed) as journal:
        run = journal.start_run("deploy", ["deploy", "dev"])
        tracker = HostTransitions.for_run(run, release="r1")
        tracker.backed_up("b1", [("app-1", None), ("app-2", None)])
        tracker.require(HOSTS, "deploy")
        handle = tracker.events("deploy")
        seen: list[str] = []
        progress = tracker.events("deploy", lambda event: seen.append(event.host))
        handle(HostEvent("app-1", COPY_TASK, "changed"))
        handle(HostEvent("app-1", RELEASE_TASK, "changed"))  # refused by the journal: no raise here
        progress(HostEvent("app-2", COPY_TASK, "changed"))   # not recorded any more; progress still shown
        assert seen == ["app-2"]
        assert [(t.host, t.to_state) for t in journal.host_transitions(run.id)] == [
            ("app-1", "backed_up"), ("app-2", "backed_up"), ("app-1", "staged")]
        assert isinstance(tracker.refused, TransitionRefused)
        assert isinstance(tracker.refused.__cause__, JournalError)

        ok = ReleaseRun(env="dev", action="deploy", run_id="x", state="deployed", target="r1", hosts=[],
                        run=None)  # type: ignore[arg-type]
        with pytest.raises(TransitionRefused, match="illegal transition of host app-1: staged -> switched"):
            _checked(tracker, lambda: ok)

        def gate_failed() -> ReleaseRun:
            raise HealthGateFailed("r1 failed its health gate on app-2")

        # the run's own failure stands (exit 3 is the contract), the refusal goes into its hint
        with pytest.raises(HealthGateFailed, match="r1 failed its health gate on app-2") as caught:
            _checked(tracker, gate_failed)
        assert caught.value.hint is not None
        assert "the journal also refused a host transition" in caught.value.hint
        assert "illegal transition of host app-1: staged -> switched" in caught.value.hint


def test_transitions_land_in_the_journal_and_continue_from_it(tmp_path: Path) -> None:
    with Journal.open(tmp_path, env="dev") as journal:
        run = journal.start_run("up", ["up", "dev"])
        first = HostTransitions.for_run(run, release="r1")
        first.backed_up("b1", [("app-1", "r0")])
        # a later step (the pipeline's deploy) starts from what the journal holds
        second = HostTransitions.for_run(run)
        assert second.state("app-1") == "backed_up"
        second.require(["app-1"], "deploy")
        second.release = "r1"
        second.events("deploy")(HostEvent("app-1", COPY_TASK, "changed"))
        moves = [(t.from_state, t.to_state, t.release) for t in journal.host_transitions(run.id)]
        assert moves == [("idle", "backed_up", "r1"), ("backed_up", "staged", "r1")]
