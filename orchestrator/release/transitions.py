"""Per-host moves through the deployment state machine (orchestrator.models.process), recorded in
the run journal as a deploy, rollback or restore goes: backed_up -> staged -> switched -> verified,
or failed -> rolled_back. A move the machine does not allow is refused, before any host changes
when it can be known in advance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.errors import OrchestratorError
from orchestrator.models import process as process_model
from orchestrator.release.results import (
    CLEANUP_TASK,
    RELEASE_TASK,
    STAGE_TASK_PREFIX,
    EventSink,
    HostOutcome,
    ReleaseRun,
)
from orchestrator.tools.ansible import HostEvent

TransitionSink = Callable[[str, str, str | None, dict[str, Any]], None]


Phase = Literal["deploy", "restore", "rollback"]


class TransitionRefused(OrchestratorError):
    """A host transition the deployment state machine (or the journal) refused (exit 1)."""


def journal_sink(run: Any) -> TransitionSink:
    """A sink writing to `run.host_transition` (orchestrator.runs.journal.Run): checked, committed."""

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
