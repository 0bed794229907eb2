"""The deployment state machine and the exhaustive check of the rolling-deploy algorithm."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import ExitStatus
from orchestrator.models.heal import Drop, Present, judge
from orchestrator.models.process import (
    ABORTING,
    TRANSITIONS,
    Action,
    HostState,
    IllegalTransition,
    Journal,
    Limits,
    ModelViolation,
    Outcome,
    Step,
    already_passed,
    batch_count,
    explore,
    is_allowed,
    next_action,
    path_lower_bound,
    plan_batches,
    rollout_configs,
    validate_transition,
)

S = HostState
#: user property read by tests/conftest.py's terminal summary
EXHAUSTIVE_PATHS_PROPERTY = "exhaustive_model_paths"
STATES = list(HostState)


# --- the state machine ----------------------------------------------------------------------


def test_happy_path_transitions_are_allowed() -> None:
    path = [S.IDLE, S.BACKED_UP, S.STAGED, S.SWITCHED, S.VERIFIED]
    assert all(is_allowed(a, b) for a, b in itertools.pairwise(path))


def test_illegal_transition_is_refused_with_a_clear_message() -> None:
    with pytest.raises(IllegalTransition) as caught:
        validate_transition("idle", "verified", host="dev-app-1")
    message = str(caught.value)
    assert "host dev-app-1: illegal transition idle -> verified" in message
    assert "allowed next states are: backed_up, failed, rolled_back" in message
    assert caught.value.exit_status is ExitStatus.FAILED


def test_a_host_skips_no_forward_step_and_the_rollback_verb_goes_straight_to_rolled_back() -> None:
    # `orchestrate rollback`: the target is already on the host, nothing is staged
    assert is_allowed(S.IDLE, S.ROLLED_BACK) and is_allowed(S.IDLE, S.FAILED)
    # a deploy cannot stage, switch or verify a host that was not backed up in the run
    for target in (S.STAGED, S.SWITCHED, S.VERIFIED):
        with pytest.raises(IllegalTransition, match=f"illegal transition idle -> {target.value}"):
            validate_transition(S.IDLE, target)
    assert not is_allowed(S.BACKED_UP, S.SWITCHED) and not is_allowed(S.STAGED, S.VERIFIED)


def test_the_deploy_algorithm_does_not_need_idle_to_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge is for the rollback verb only: without it every deploy path is still legal."""
    import orchestrator.models.process as process

    narrower = {**TRANSITIONS, S.IDLE: frozenset({S.BACKED_UP, S.FAILED})}
    monkeypatch.setattr(process, "TRANSITIONS", narrower)
    assert not is_allowed(S.IDLE, S.ROLLED_BACK)
    for batches in ([["h1"]], [["h1"], ["h2"]], [["h1", "h2"]]):
        assert explore(batches, limits=Limits(max_faults=2, max_crashes=1)).paths > 1


@pytest.mark.parametrize(("current", "observed", "passed"), [
    (S.VERIFIED, S.STAGED, True), (S.STAGED, S.STAGED, True), (S.SWITCHED, S.BACKED_UP, True),
    (S.BACKED_UP, S.STAGED, False), (S.IDLE, S.VERIFIED, False),
    # an aborting host has passed nothing: a forward observation is a transition (and illegal)
    (S.FAILED, S.STAGED, False), (S.ROLLED_BACK, S.VERIFIED, False), (S.VERIFIED, S.FAILED, False),
])
def test_already_passed_is_the_forward_path_order(current: HostState, observed: HostState, passed: bool) -> None:
    assert already_passed(current, observed) is passed


def test_final_state_and_unknown_state_are_refused() -> None:
    with pytest.raises(IllegalTransition, match=r"rolled_back -> idle; .*none \(final state\)"):
        validate_transition(S.ROLLED_BACK, S.IDLE)
    with pytest.raises(IllegalTransition, match="unknown host state 'deployed'"):
        validate_transition("switched", "deployed")
    assert not is_allowed("switched", "deployed")


def test_every_state_is_reachable_from_idle_and_can_reach_an_end() -> None:
    reachable = {S.IDLE}
    frontier = [S.IDLE]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(HostState)
    ends = {S.VERIFIED, S.ROLLED_BACK}
    for state in HostState:
        seen, stack = {state}, [state]
        while stack:
            for nxt in TRANSITIONS[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        assert seen & ends, state


@given(st.lists(st.sampled_from(STATES), min_size=1, max_size=30))
def test_a_journal_accepts_exactly_the_allowed_transitions(sequence: list[HostState]) -> None:
    """Feed random state sequences to a journal-like recorder: only allowed steps are kept."""
    current = S.IDLE
    accepted = [current]
    for target in sequence:
        allowed = target in TRANSITIONS[current]
        try:
            validate_transition(current, target)
        except IllegalTransition:
            assert not allowed
            continue
        assert allowed
        current = target
        accepted.append(current)
    assert all(is_allowed(a, b) for a, b in itertools.pairwise(accepted))
    # a final state accepts nothing more
    if current is S.ROLLED_BACK:
        assert not any(is_allowed(current, s) for s in STATES)


@given(st.text(max_size=12), st.sampled_from(STATES))
def test_unknown_names_are_never_allowed(name: str, state: HostState) -> None:
    if name in {s.value for s in STATES}:
        return
    assert not is_allowed(name, state)
    assert not is_allowed(state, name)


# --- batches and the pure algorithm ---------------------------------------------------------


@pytest.mark.parametrize(("size", "total", "expected"), [("34%", 3, 1), ("100%", 3, 3), ("50%", 5, 2),
                                                          ("1%", 4, 1), (2, 5, 2), (9, 3, 3)])
def test_batch_count_follows_ansible_serial(size: int | str, total: int, expected: int) -> None:
    assert batch_count(size, total) == expected


def test_plan_batches_puts_the_canary_first() -> None:
    hosts = [f"h{i}" for i in range(1, 6)]
    assert plan_batches(hosts, 2, canary_hosts=1) == [["h1"], ["h2", "h3"], ["h4", "h5"]]
    assert plan_batches(hosts, "100%") == [hosts]
    assert plan_batches(hosts[:3], "34%") == [["h1"], ["h2"], ["h3"]]


def test_next_action_goes_batch_by_batch_and_aborts_for_good() -> None:
    batches = [["a"], ["b", "c"]]
    journal: dict[str, HostState] = dict.fromkeys("abc", S.IDLE)
    assert next_action(batches, journal) == Action(Step.BACKUP, ("a",))
    journal["a"] = S.VERIFIED
    assert next_action(batches, journal) == Action(Step.BACKUP, ("b", "c"))
    journal.update(b=S.STAGED, c=S.STAGED)
    assert next_action(batches, journal) == Action(Step.SWITCH, ("b", "c"))
    journal.update(b=S.FAILED)
    # c only staged: it may already run the new release if the controller died mid-switch
    assert next_action(batches, journal) == Action(Step.ROLLBACK, ("a", "b", "c"))
    journal.update(a=S.ROLLED_BACK, b=S.ROLLED_BACK, c=S.ROLLED_BACK)
    assert next_action(batches, journal) == Action(None, outcome=Outcome.ROLLED_BACK)


# --- the exhaustive exploration -------------------------------------------------------------


def test_tiny_models_have_exactly_the_paths_counted_by_hand() -> None:
    """One host, one fault, no crash: fault-free, or one of backup/stage/gate failing (1 path
    each) or the switch failing before or after the rename (2 paths): 6 paths."""
    assert explore([["h1"]], limits=Limits(max_faults=0, max_crashes=0)).paths == 1
    result = explore([["h1"]], limits=Limits(max_faults=1, max_crashes=0))
    assert (result.paths, result.deployed_paths, result.rolled_back_paths) == (6, 1, 5)


@pytest.mark.slow
def test_exhaustive_exploration_of_every_rollout_up_to_four_hosts(
        record_property: Callable[[str, object], None]) -> None:
    """Every batching of 1..4 hosts, every failure point (2 per path) and controller deaths
    (2 per path, at any journal write), and the heal loop (two alerts after the deploy, and a
    remediation taking the lock at every controller death): the invariants hold on every path.

    The path count goes into the test report's user properties, which travel from xdist
    workers to the controller; tests/conftest.py prints it in the terminal summary."""
    limits = Limits(max_faults=2, max_crashes=2, max_alerts=2)
    started = time.monotonic()
    total = bound = configs = remediated = 0
    for batches in rollout_configs(4):
        result = explore(batches, limits=limits, heal=True)
        assert result.deployed_paths >= 1 and result.rolled_back_paths >= 1
        assert result.paths == result.deployed_paths + result.rolled_back_paths
        assert result.paths > path_lower_bound(batches, limits)
        assert 0 < result.remediated_paths < result.deployed_paths  # remediations act, not everywhere
        total += result.paths
        bound += path_lower_bound(batches, limits)
        remediated += result.remediated_paths
        configs += 1
    record_property(EXHAUSTIVE_PATHS_PROPERTY, {
        "paths": total, "rollouts": configs, "hosts": "1-4", "lower_bound": bound, "remediated": remediated,
        "seconds": round(time.monotonic() - started, 1)})
    assert configs == 13  # 1 + 2 + 4 + 6 distinct batchings of 1, 2, 3, 4 hosts
    assert total > bound


# --- the heal loop ----------------------------------------------------------------------------


def test_the_heal_loop_after_one_clean_deploy_has_the_paths_counted_by_hand() -> None:
    """One host, no fault: the deploy completes, then up to two alerts. From the start: no alert
    (1), a dropped one then [none, dropped, acted] (3), an acted one then [none, dropped] (2):
    6 paths, 3 of them with a remediation."""
    result = explore([["h1"]], limits=Limits(max_faults=0, max_crashes=0, max_alerts=2), heal=True)
    assert (result.paths, result.deployed_paths, result.remediated_paths) == (6, 6, 3)


def acts_on_every_firing_alert(present: Present) -> tuple[object, str] | None:
    """Wrong: the webhook said so, and it still fires."""
    return None if present.firing else ("resolved", "")


def ignores_the_floor(present: Present) -> tuple[object, str] | None:
    """Wrong: stale alerts dropped, an unfinished run respected, but no floor."""
    verdict = judge(present)
    return None if verdict is not None and verdict[0] in (Drop.FLOOR, Drop.NOTHING_TO_UNDO) else verdict


def test_a_stale_alert_after_a_failed_gate_would_go_past_the_floor() -> None:
    """The reported incident: v3's gate fails and v2 is restored; HighErrorRate (about v3, or
    measured over its window) must not take the fleet to v1."""
    with pytest.raises(ModelViolation) as caught:
        explore([["h1"]], limits=Limits(max_faults=1, max_crashes=0), heal=True, decide=ignores_the_floor)
    violation = caught.value
    assert "past the floor" in violation.message and "older release" in violation.message
    assert "done (rolled_back)" in violation.path and any("FAILS" in step for step in violation.path)


def test_a_remediation_between_a_crash_and_the_resume_is_caught() -> None:
    with pytest.raises(ModelViolation) as caught:
        explore([["h1", "h2"]], limits=Limits(max_faults=0, max_crashes=1), heal=True,
                decide=acts_on_every_firing_alert)
    assert "while the deploy is unfinished" in caught.value.message
    assert any("controller dies" in step for step in caught.value.path)


def test_the_heal_loop_does_not_change_the_deploy_paths_it_checks() -> None:
    for batches in ([["h1"]], [["h1"], ["h2"]], [["h1", "h2"]]):
        plain = explore(batches, limits=Limits(max_faults=1, max_crashes=1))
        healed = explore(batches, limits=Limits(max_faults=1, max_crashes=1), heal=True)
        assert healed.states == plain.states and healed.paths > plain.paths
        assert plain.remediated_paths == 0 < healed.remediated_paths


# --- the checker catches wrong algorithms ---------------------------------------------------


def only_failed_batch_rolls_back(batches: Sequence[Sequence[str]], journal: Journal) -> Action:
    """Wrong: on a failure, only the failing batch goes back; earlier batches stay on new."""
    if any(journal[h] in ABORTING for b in batches for h in b):
        for batch in batches:
            if any(journal[h] in ABORTING for h in batch):
                back = tuple(h for h in batch if journal[h] in {S.STAGED, S.SWITCHED, S.VERIFIED, S.FAILED})
                if back:
                    return Action(Step.ROLLBACK, back)
        return Action(None, outcome=Outcome.ROLLED_BACK)
    return next_action(batches, journal)


def trusts_the_journal_for_staged_hosts(batches: Sequence[Sequence[str]], journal: Journal) -> Action:
    """Wrong: a host the journal still calls `staged` is assumed to run the old release."""
    hosts = [h for b in batches for h in b]
    if any(journal[h] in ABORTING for h in hosts):
        back = tuple(h for h in hosts if journal[h] in {S.SWITCHED, S.VERIFIED, S.FAILED})
        if back:
            return Action(Step.ROLLBACK, back)
        return Action(None, outcome=Outcome.ROLLED_BACK)
    return next_action(batches, journal)


def test_not_rolling_back_earlier_batches_is_caught_with_a_counterexample() -> None:
    with pytest.raises(ModelViolation) as caught:
        explore([["h1"], ["h2"]], limits=Limits(max_faults=1, max_crashes=0), algorithm=only_failed_batch_rolls_back)
    violation = caught.value
    assert "fleet ends on more than one release" in violation.message
    assert any("FAILS" in step for step in violation.path)
    assert violation.path[-1] == "done (rolled_back)"


def test_a_crash_between_switch_and_journal_write_is_needed_to_catch_a_subtle_bug() -> None:
    """Trusting `staged` is right without crashes, and wrong once the controller can die
    after a switch and before its journal write."""
    batches = [["h1", "h2"]]
    explore(batches, limits=Limits(max_faults=2, max_crashes=0), algorithm=trusts_the_journal_for_staged_hosts)
    with pytest.raises(ModelViolation) as caught:
        explore(batches, limits=Limits(max_faults=2, max_crashes=1), algorithm=trusts_the_journal_for_staged_hosts)
    violation = caught.value
    assert "new release" in violation.message and "health probe" in violation.message
    assert any("controller dies" in step for step in violation.path)


def test_skipping_the_health_gate_on_resume_is_caught() -> None:
    def gate_skipped(batches: Sequence[Sequence[str]], journal: Journal) -> Action:
        action = next_action(batches, journal)
        if action.step is Step.GATE:
            # "switched means it is fine": jump to the next batch without probing
            fake = {h: (S.VERIFIED if s is S.SWITCHED else s) for h, s in journal.items()}
            return next_action(batches, fake)
        return action

    with pytest.raises(ModelViolation, match="has not passed its health probe"):
        explore([["h1"]], limits=Limits(max_faults=0, max_crashes=0), algorithm=gate_skipped)
