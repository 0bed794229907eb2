"""The deployment state machine inside the real run journal (SQLite): a controller that follows
`next_action` records only allowed transitions, and the journal refuses illegal ones."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.models.process import (
    HostState,
    Outcome,
    Step,
    is_allowed,
    next_action,
    plan_batches,
    result_state,
)
from orchestrator.runs.journal import Journal, JournalError


def _drive(state_dir: Path, hosts: list[str], batch_size: int | str, failing: set[tuple[str, Step]]) -> Outcome:
    """Run the pure controller against the journal, with `failing` (host, step) pairs failing."""
    batches = plan_batches(hosts, batch_size)
    with Journal.open(state_dir, env="dev") as journal:
        run = journal.start_run("deploy")
        while True:
            states = {h: HostState(run.host_states().get(h, "idle")) for h in hosts}
            action = next_action(batches, states)
            if action.step is None:
                assert action.outcome is not None
                run.complete()
                return action.outcome
            for host in action.hosts:
                ok = (host, action.step) not in failing
                new = result_state(action.step, ok)
                if new != states[host]:
                    run.host_transition(host, new.value, expect_from=states[host].value)


def test_a_gate_failure_in_the_second_batch_rolls_back_the_first(tmp_path: Path) -> None:
    hosts = ["dev-app-1", "dev-app-2", "dev-app-3"]
    outcome = _drive(tmp_path, hosts, 1, {("dev-app-2", Step.GATE)})
    assert outcome is Outcome.ROLLED_BACK
    with Journal.open(tmp_path, env="dev") as journal:
        (run,) = journal.runs()
        assert journal.host_states(run.id) == {"dev-app-1": "rolled_back", "dev-app-2": "rolled_back"}
        path = [(t.host, t.to_state) for t in journal.host_transitions(run.id)]
    assert path.index(("dev-app-1", "verified")) < path.index(("dev-app-2", "failed"))
    assert path[-2:] == [("dev-app-1", "rolled_back"), ("dev-app-2", "rolled_back")]


def test_a_clean_deploy_verifies_every_host(tmp_path: Path) -> None:
    hosts = ["a", "b", "c", "d"]
    assert _drive(tmp_path, hosts, "50%", set()) is Outcome.DEPLOYED
    with Journal.open(tmp_path, env="dev") as journal:
        (run,) = journal.runs()
        assert set(journal.host_states(run.id).values()) == {"verified"}
        assert len(journal.host_transitions(run.id)) == 4 * len(hosts)


def test_the_journal_refuses_an_illegal_transition(tmp_path: Path) -> None:
    with Journal.open(tmp_path, env="dev") as journal:
        run = journal.start_run("deploy")
        run.host_transition("dev-app-1", "backed_up")
        with pytest.raises(JournalError, match="illegal transition of host dev-app-1: backed_up -> verified"):
            run.host_transition("dev-app-1", "verified")
        # refused means not recorded
        assert run.host_states() == {"dev-app-1": "backed_up"}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(list(HostState)), min_size=1, max_size=12))
def test_the_journal_records_exactly_the_allowed_transitions(sequence: list[HostState]) -> None:
    with tempfile.TemporaryDirectory() as state_dir, Journal.open(Path(state_dir), env="dev") as journal:
        run = journal.start_run("deploy")
        current = HostState.IDLE
        expected = []
        for target in sequence:
            if is_allowed(current, target):
                run.host_transition("h1", target.value)
                expected.append((current.value, target.value))
                current = target
            else:
                with pytest.raises(JournalError):
                    run.host_transition("h1", target.value)
        assert [(t.from_state, t.to_state) for t in journal.host_transitions(run.id)] == expected
