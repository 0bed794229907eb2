"""The per-host deployment state machine, the rolling-deploy algorithm, and its exhaustive check.

A rolling deploy moves every app host through

    idle -> backed_up -> staged -> switched -> verified

in batches. Any failure (`failed`) aborts the rollout and every host that may already run the
new release is switched back and probed (`rolled_back`). `orchestrate rollback` moves a host
from idle straight to `rolled_back` (or `failed`). `FORWARD_PATH` is the happy path in order;
a re-run step that observes a state a host already passed records nothing
(orchestrator.release.transitions.HostTransitions drives this from the real deploy's events).
The journal records each host's state after each step and refuses transitions that `TRANSITIONS` does not allow
(`validate_transition`).

`next_action(batches, journal)` is the whole controller: a pure function from the journal to
the next step. The real deploy loop and the resume after a crash both just call it again, so
resuming needs no memory beyond the journal. Within a batch a step runs on all of the batch's
hosts in parallel (Ansible's linear strategy with `serial`), and results are journalled one by
one after the step.

`explore()` checks the algorithm exhaustively (every path, not a sample) on a model of the
hosts: each step on each host may fail (with every partial effect it can leave behind), and
the controller may die after any step with any prefix of that step's journal writes done and
the rest of the hosts' effects none, partial or complete. On every path it checks that each
journal write is an allowed transition, that no host runs the new release without a backup,
and at the end that every host runs a release that passed its health probe after its last
restart and that the whole fleet runs one release.

With `heal=True` it adds the heal loop (orchestrator.models.heal): a rollback remediation waits
for the environment lock and takes it whenever the deploy lets it go -- between a controller's
death and the resume, and after the run's end -- and then decides with the heal server's own
`judge`, on facts that cover alerts firing and clearing at any point (the alert may fire or not
now, may have arrived before or after the host's last move, may or may not still cover it with
its window). On every path it checks that a remediation never acts on an unfinished run and never
takes a host past the floor: the release before the newest completed deploy, or the release a
run that went back (a gate failure that restored the hosts, an earlier remediation) left serving.
The model's fleet starts on the `old` release, which a completed deploy put there over an
`older` one; a remediation that wins the lock before the deploy starts is a run before this one
(the model of the deploy is the same over whichever release then serves).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from orchestrator.errors import OrchestratorError
from orchestrator.models.heal import LastRun, Present, RunKind, judge


class HostState(StrEnum):
    """Where one host is in one deployment run, as the journal records it."""

    IDLE = "idle"
    BACKED_UP = "backed_up"
    STAGED = "staged"
    SWITCHED = "switched"
    VERIFIED = "verified"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S = HostState

#: allowed transitions; anything else is refused by the journal
TRANSITIONS: Mapping[HostState, frozenset[HostState]] = {
    # idle -> rolled_back is `orchestrate rollback`: a host switched straight to a release that is
    # already on it (nothing new is staged, so nothing needs a backup first). The deploy
    # algorithm never writes it: it rolls back only hosts that may run the new release
    # (MAY_RUN_NEW), and the exhaustive exploration checks every write it makes.
    S.IDLE: frozenset({S.BACKED_UP, S.FAILED, S.ROLLED_BACK}),
    S.BACKED_UP: frozenset({S.STAGED, S.FAILED}),
    # A staged host may already run the new release when the controller died right after the
    # switch and before the journal write: it is rolled back like a switched one.
    S.STAGED: frozenset({S.SWITCHED, S.FAILED, S.ROLLED_BACK}),
    S.SWITCHED: frozenset({S.VERIFIED, S.FAILED, S.ROLLED_BACK}),
    # A verified host goes back when a later batch fails; `failed` when that rollback fails.
    S.VERIFIED: frozenset({S.FAILED, S.ROLLED_BACK}),
    S.FAILED: frozenset({S.ROLLED_BACK}),
    S.ROLLED_BACK: frozenset(),
}

INITIAL_STATE = S.IDLE
#: the happy path of a deploy, in order
FORWARD_PATH: tuple[HostState, ...] = (S.IDLE, S.BACKED_UP, S.STAGED, S.SWITCHED, S.VERIFIED)
#: states a run may end in, per outcome
DEPLOYED_STATES = frozenset({S.VERIFIED})
ROLLED_BACK_STATES = frozenset({S.IDLE, S.BACKED_UP, S.ROLLED_BACK})
#: hosts in these states may run the new release (or a broken start of either): roll them back
MAY_RUN_NEW = frozenset({S.STAGED, S.SWITCHED, S.VERIFIED, S.FAILED})
#: any of these in the journal means the run is aborting: it never goes forward again
ABORTING = frozenset({S.FAILED, S.ROLLED_BACK})


class IllegalTransition(OrchestratorError):
    """A journal write that the deployment state machine does not allow."""


def _state(value: HostState | str) -> HostState:
    try:
        return HostState(value)
    except ValueError:
        valid = ", ".join(s.value for s in HostState)
        raise IllegalTransition(f"unknown host state {value!r} (valid states: {valid})") from None


def is_allowed(from_state: HostState | str, to_state: HostState | str) -> bool:
    """Whether a host may go from `from_state` to `to_state` (unknown names are not allowed)."""
    try:
        return HostState(to_state) in TRANSITIONS[HostState(from_state)]
    except ValueError:
        return False


def validate_transition(from_state: HostState | str, to_state: HostState | str, *, host: str = "") -> None:
    """Raise IllegalTransition, naming the host and the allowed next states, unless allowed.

    This is the validator the journal calls before it records a host's new state.
    """
    source, target = _state(from_state), _state(to_state)
    if target in TRANSITIONS[source]:
        return
    allowed = ", ".join(sorted(s.value for s in TRANSITIONS[source])) or "none (final state)"
    who = f"host {host}: " if host else ""
    raise IllegalTransition(f"{who}illegal transition {source.value} -> {target.value}; "
                            f"from {source.value} the allowed next states are: {allowed}")


def already_passed(current: HostState | str, observed: HostState | str) -> bool:
    """Whether a host in `current` has already been through `observed` on the forward path.

    A step that runs again (a resumed run repeats its interrupted step) reports what it did
    the first time; that is no transition, so nothing is recorded for it.
    """
    source, target = _state(current), _state(observed)
    return source in FORWARD_PATH and target in FORWARD_PATH and FORWARD_PATH.index(source) >= \
        FORWARD_PATH.index(target)


# --- batches ------------------------------------------------------------------------------


def batch_count(batch_size: int | str, total: int) -> int:
    """Hosts per batch for a count or a percentage of `total` (as Ansible's `serial`: floor, at least 1)."""
    if isinstance(batch_size, str):
        percent = int(batch_size.strip().rstrip("%"))
        return max(1, int(percent / 100 * total))
    return max(1, min(batch_size, total))


def plan_batches(hosts: Sequence[str], batch_size: int | str, *, canary_hosts: int = 0) -> list[list[str]]:
    """Split `hosts` (in order) into rollout batches: the canary first when given, then batches."""
    hosts = list(hosts)
    batches: list[list[str]] = []
    if canary_hosts > 0 and hosts:
        batches.append(hosts[:canary_hosts])
        hosts = hosts[canary_hosts:]
    size = batch_count(batch_size, len(hosts) + sum(len(b) for b in batches))
    batches += [hosts[i:i + size] for i in range(0, len(hosts), size)]
    return batches


# --- the algorithm ------------------------------------------------------------------------


class Step(StrEnum):
    """What the controller does to a host."""

    BACKUP = "backup"
    STAGE = "stage"
    SWITCH = "switch"
    GATE = "health-gate"
    ROLLBACK = "rollback"


class Outcome(StrEnum):
    """How a run ends."""

    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"


#: forward steps and the journal state each needs
FORWARD: tuple[tuple[Step, HostState], ...] = (
    (Step.BACKUP, S.IDLE),
    (Step.STAGE, S.BACKED_UP),
    (Step.SWITCH, S.STAGED),
    (Step.GATE, S.SWITCHED),
)

_SUCCESS: Mapping[Step, HostState] = {
    Step.BACKUP: S.BACKED_UP,
    Step.STAGE: S.STAGED,
    Step.SWITCH: S.SWITCHED,
    Step.GATE: S.VERIFIED,
    Step.ROLLBACK: S.ROLLED_BACK,
}


@dataclass(frozen=True)
class Action:
    """The next thing to do: a step on some hosts (in parallel), or the end of the run."""

    step: Step | None
    hosts: tuple[str, ...] = ()
    outcome: Outcome | None = None

    @property
    def done(self) -> bool:
        return self.step is None

    def __str__(self) -> str:
        if self.step is None:
            return f"done ({self.outcome})"
        return f"{self.step} on {', '.join(self.hosts)}"


def result_state(step: Step, ok: bool) -> HostState:
    """The journal state a host goes to after `step` succeeded or failed."""
    return _SUCCESS[step] if ok else S.FAILED


Journal = Mapping[str, HostState]
Algorithm = Callable[[Sequence[Sequence[str]], Journal], Action]


def next_action(batches: Sequence[Sequence[str]], journal: Journal) -> Action:
    """The controller's next step given only the journal (first run and resume alike).

    Forward: batch by batch, each step on every host of the batch that needs it. Once any
    host failed or was rolled back the run aborts for good: every host that may run the new
    release (earlier batches included) is rolled back, and the run ends rolled back.
    """
    hosts = [h for batch in batches for h in batch]
    if any(journal[h] in ABORTING for h in hosts):
        back = tuple(h for h in hosts if journal[h] in MAY_RUN_NEW)
        if back:
            return Action(Step.ROLLBACK, back)
        return Action(None, outcome=Outcome.ROLLED_BACK)
    for batch in batches:
        for step, needed in FORWARD:
            todo = tuple(h for h in batch if journal[h] == needed)
            if todo:
                return Action(step, todo)
    return Action(None, outcome=Outcome.DEPLOYED)


# --- the model of the hosts ---------------------------------------------------------------


OLDER = "older"
OLD = "old"
NEW = "new"
#: releases in the order they were deployed (a remediation must not go below its floor)
RELEASE_ORDER = (OLDER, OLD, NEW)


class Host(NamedTuple):
    """What is really on a host (which the journal may lag behind)."""

    release: str = OLD
    #: the running release passed a health probe since its last (re)start
    healthy: bool = True
    staged: bool = False
    backed_up: bool = False
    #: the host's `previous` link: where a rollback goes
    previous: str = OLDER


class ModelViolation(AssertionError):
    """The model reached a state that breaks an invariant; carries the path that got there."""

    def __init__(self, message: str, path: Sequence[str]) -> None:
        super().__init__(message + "\n  path:\n    " + "\n    ".join(path))
        self.message = message
        self.path = list(path)


def _full_effect(step: Step, host: Host) -> Host:
    if step is Step.BACKUP:
        return host._replace(backed_up=True)
    if step is Step.STAGE:
        return host._replace(staged=True)
    if step is Step.SWITCH:
        return _switched(host)
    if step is Step.GATE:
        return host._replace(healthy=True)
    return _restored(host, healthy=True)


def _switched(host: Host) -> Host:
    """The new release current, the release it replaced as `previous`, not probed yet."""
    return host._replace(release=NEW, previous=OLD, healthy=False)


def _restored(host: Host, *, healthy: bool) -> Host:
    """The deploy's rollback: the old release current again and its own `previous` restored."""
    return host._replace(release=OLD, previous=OLDER, healthy=healthy)


def fault_effects(step: Step, host: Host) -> list[Host]:
    """What a host may look like after `step` failed on it: every partial effect."""
    if step is Step.SWITCH:
        # the rename may or may not have happened before the restart failed
        return [host, _switched(host)]
    if step is Step.GATE:
        return [host._replace(healthy=False)]
    if step is Step.ROLLBACK:
        return [host, _restored(host, healthy=False)]
    return [host]


def crash_effects(step: Step, host: Host) -> list[Host]:
    """What a host may look like when the controller died during `step`: none, partial, all."""
    found = [host, *fault_effects(step, host), _full_effect(step, host)]
    return list(dict.fromkeys(found))


def _precondition(step: Step, host: Host) -> str | None:
    if step is Step.SWITCH and not host.staged:
        return "switch to a release that is not staged"
    if step is Step.SWITCH and not host.backed_up:
        return "switch without a backup"
    if step is Step.GATE and host.release != NEW:
        return f"health gate of the new release on a host running the {host.release} release"
    return None


class World(NamedTuple):
    """One state of the model: the journal, the hosts, and the faults and crashes used so far."""

    journal: tuple[HostState, ...]
    hosts: tuple[Host, ...]
    faulted: frozenset[tuple[int, Step]] = frozenset()
    crashes: int = 0


@dataclass(frozen=True)
class Limits:
    """How much goes wrong on one path.

    Faults are transient: a step fails at most once per host (so a retried rollback
    succeeds); `max_faults` bounds the failures per path and `max_crashes` the controller
    deaths per path.
    """

    max_faults: int = 2
    max_crashes: int = 2
    #: alerts the heal loop decides on after the deploy (with `heal=True`)
    max_alerts: int = 2


@dataclass
class ExploreResult:
    """What an exhaustive exploration covered."""

    batches: list[list[str]]
    paths: int
    states: int
    deployed_paths: int
    rolled_back_paths: int
    limits: Limits = field(default_factory=Limits)
    #: paths on which a rollback remediation acted (with `heal=True`)
    remediated_paths: int = 0


def _check_final(world: World, names: Sequence[str], outcome: Outcome | None) -> str | None:
    releases = {h.release for h in world.hosts}
    for name, host, state in zip(names, world.hosts, world.journal, strict=True):
        if not host.healthy:
            return f"{name} ends on the {host.release} release, which has not passed its health probe"
        if state in DEPLOYED_STATES and host.release != NEW:
            return f"{name}: journal says {state} but the host runs the {host.release} release"
        if state in ROLLED_BACK_STATES and host.release != OLD:
            return f"{name}: journal says {state} but the host runs the {host.release} release"
    if len(releases) != 1:
        by_release = {r: [n for n, h in zip(names, world.hosts, strict=True) if h.release == r] for r in releases}
        return "fleet ends on more than one release: " + "; ".join(
            f"{r}: {', '.join(hs)}" for r, hs in sorted(by_release.items()))
    expected = NEW if outcome is Outcome.DEPLOYED else OLD
    if releases != {expected}:
        return f"run ends {outcome} but the fleet runs the {releases.pop()} release"
    return None


def _check_safety(world: World, names: Sequence[str]) -> str | None:
    for name, host in zip(names, world.hosts, strict=True):
        if host.release == NEW and not host.backed_up:
            return f"{name} runs the new release without a backup"
    return None


Judge = Callable[[Present], "tuple[object, str] | None"]


def explore(batches: Sequence[Sequence[str]], *, limits: Limits | None = None,
            algorithm: Algorithm = next_action, heal: bool = False, decide: Judge = judge) -> ExploreResult:
    """Check `algorithm` on every path of the model; raise ModelViolation with a counterexample.

    With `heal`, the heal loop deciding with `decide` (orchestrator.models.heal.judge) takes the
    lock at every point the deploy lets it go (see the module docstring). Paths are counted
    exactly (memoised over identical states, which have identical futures).
    """
    limits = limits or Limits()
    # the same facts come back on many paths: decide once per distinct Present
    decide = functools.lru_cache(maxsize=None)(decide)
    names = [h for batch in batches for h in batch]
    index = {name: i for i, name in enumerate(names)}
    start = World(journal=tuple(S.IDLE for _ in names), hosts=tuple(Host() for _ in names))
    memo: dict[World, tuple[int, int, int, int]] = {}
    # the heal loop's outcomes depend on less than a World: what the journal says moved, the hosts
    crash_gaps_checked: set[tuple[HostState, ...]] = set()
    heal_memo: dict[_HealWorld, tuple[int, int]] = {}
    on_stack: set[World] = set()
    path: list[str] = []
    max_depth = 8 * len(names) + 4 * (limits.max_faults + limits.max_crashes) + 8

    def fail(message: str) -> ModelViolation:
        return ModelViolation(message, path)

    def successors(world: World, action: Action) -> list[tuple[str, World]]:
        assert action.step is not None
        step = action.step
        idx = [index[h] for h in action.hosts]
        for i in idx:
            problem = _precondition(step, world.hosts[i])
            if problem:
                raise fail(f"{names[i]}: {problem}")
        # per host: (ok, effect) choices; a fault is possible while the budget lasts
        faults_left = limits.max_faults - len(world.faulted)
        choices: list[list[tuple[bool, Host]]] = []
        for i in idx:
            host = world.hosts[i]
            options = [(True, _full_effect(step, host))]
            if faults_left > 0 and (i, step) not in world.faulted:
                options += [(False, h) for h in fault_effects(step, host)]
            choices.append(options)
        found: dict[World, str] = {}

        def describe(hosts: Sequence[int], combo: Sequence[tuple[bool, Host]]) -> str:
            return ", ".join(f"{names[i]} {'ok' if ok else 'FAILS'}" for i, (ok, _) in zip(hosts, combo, strict=True))

        def written(hosts: Sequence[int], combo: Sequence[tuple[bool, Host]]) -> tuple[World, str] | None:
            """Hosts' effects applied and their results journalled; None when over the fault budget."""
            faulted = world.faulted | {(i, step) for i, (ok, _) in zip(hosts, combo, strict=True) if not ok}
            if len(faulted) > limits.max_faults:
                return None
            host_states = list(world.hosts)
            journal = list(world.journal)
            label = describe(hosts, combo)
            for i, (ok, effect) in zip(hosts, combo, strict=True):
                host_states[i] = effect
                new = result_state(step, ok)
                if new != journal[i]:
                    if not is_allowed(journal[i], new):
                        raise fail(f"{names[i]}: journal refuses {journal[i]} -> {new} after {step} ({label})")
                    journal[i] = new
            return World(tuple(journal), tuple(host_states), faulted, world.crashes), label

        for combo in itertools.product(*choices):
            done = written(idx, combo)
            if done is not None:
                found.setdefault(done[0], f"{step}: {done[1]}")
        if world.crashes < limits.max_crashes:
            # The controller dies after the first k journal writes of this step; hosts whose
            # result was not written may show any effect of the step (none, partial, all).
            for k in range(len(idx)):
                head, tail = idx[:k], idx[k:]
                tail_effects = list(itertools.product(*(crash_effects(step, world.hosts[i]) for i in tail)))
                for combo in itertools.product(*choices[:k]):
                    done = written(head, combo)
                    if done is None:
                        continue
                    base, label = done
                    if heal and base.journal not in crash_gaps_checked:
                        # the lock is free until the resume: a remediation may take it now
                        _heal_at_crash([state in RELEASE_MOVES for state in base.journal], names, decide, path)
                        crash_gaps_checked.add(base.journal)
                    for effects in tail_effects:
                        host_states = list(base.hosts)
                        for i, effect in zip(tail, effects, strict=True):
                            host_states[i] = effect
                        successor = base._replace(hosts=tuple(host_states), crashes=world.crashes + 1)
                        found.setdefault(successor, f"{step}: {label + '; ' if label else ''}controller dies "
                                                    f"after {k} journal write(s), resumes from the journal")
        return [(label, w) for w, label in found.items()]

    def visit(world: World) -> tuple[int, int, int, int]:
        cached = memo.get(world)
        if cached is not None:
            return cached
        if world in on_stack or len(path) > max_depth:
            raise fail("the deploy does not terminate")
        problem = _check_safety(world, names)
        if problem:
            raise fail(problem)
        journal = dict(zip(names, world.journal, strict=True))
        action = algorithm(batches, journal)
        if action.done:
            problem = _check_final(world, names, action.outcome)
            if problem:
                path.append(str(action))
                raise fail(problem)
            path.append(str(action))
            ends, remediated = (_heal_after(world, names, action.outcome, decide, limits, path, heal_memo)
                                if heal else (1, 0))
            path.pop()
            result = (ends, ends if action.outcome is Outcome.DEPLOYED else 0,
                      ends if action.outcome is Outcome.ROLLED_BACK else 0, remediated)
            memo[world] = result
            return result
        on_stack.add(world)
        total = [0, 0, 0, 0]
        for label, successor in successors(world, action):
            path.append(label)
            counts = visit(successor)
            path.pop()
            for j in range(4):
                total[j] += counts[j]
        on_stack.discard(world)
        result = (total[0], total[1], total[2], total[3])
        memo[world] = result
        return result

    paths, deployed, rolled_back, remediated = visit(start)
    return ExploreResult(batches=[list(b) for b in batches], paths=paths, states=len(memo),
                         deployed_paths=deployed, rolled_back_paths=rolled_back, limits=limits,
                         remediated_paths=remediated)


# --- the heal loop ------------------------------------------------------------------------


#: journal states that record a move of the host's release (orchestrator.heal.present.RELEASE_MOVES)
RELEASE_MOVES = frozenset({S.SWITCHED, S.VERIFIED, S.FAILED, S.ROLLED_BACK})


def _alert_facts(moved: bool, last: LastRun) -> Iterable[Present]:
    """Every `Present` a rollback remediation about a host may find after the lock: the alert fires
    or has cleared; it arrived before or after the host's last move, and its window may still
    cover that move -- both only when the journal records a move of the host at all."""
    timing = (False, True) if moved else (False,)
    for firing, host_moved, covers in itertools.product((True, False), timing, timing):
        yield Present(action="rollback", firing=firing, host_moved=host_moved, window_covers_move=covers,
                      last_run=last)


def _heal_at_crash(moved: Sequence[bool], names: Sequence[str], decide: Judge, path: Sequence[str]) -> None:
    """A remediation that takes the lock after the controller died and before the resume: the
    journal holds the deploy as interrupted (`moved`: which hosts it records a move of), and no
    rollback may act on it."""
    last = LastRun("deploy", "deploy", RunKind.UNFINISHED, NEW)
    for i, host_moved in enumerate(moved):
        for present in _alert_facts(host_moved, last):
            if decide(present) is None:
                raise ModelViolation(f"a rollback remediation about {names[i]} acts while the deploy is unfinished "
                                     "(the controller died; the resume would continue on a fleet it did not leave)",
                                     [*path, "controller dies; the heal server takes the lock before the resume"])


class _HealWorld(NamedTuple):
    hosts: tuple[Host, ...]
    moved: tuple[bool, ...]
    last: LastRun
    floor: str
    alerts: int = 0


def _heal_after(world: World, names: Sequence[str], outcome: Outcome | None, decide: Judge, limits: Limits,
                path: list[str], memo: dict[_HealWorld, tuple[int, int]]) -> tuple[int, int]:
    """(paths, paths on which a remediation acted) of the heal loop after the deploy ended.

    The floor is the ground truth, kept apart from what `decide` sees: a completed deploy may
    be undone down to the release it replaced (`old`); a run that restored the hosts after a
    failed gate pins `old`; a rollback that moved no host leaves the floor where it was
    (`older`: the deploy of `old` before it may be undone); a remediation that acted pins
    what it left serving.
    """
    moved = tuple(state in RELEASE_MOVES for state in world.journal)
    if outcome is Outcome.DEPLOYED:
        last, floor = LastRun("deploy", "deploy", RunKind.FORWARD, NEW), OLD
    elif any(moved):
        last, floor = LastRun("deploy", "deploy", RunKind.BACKWARD, None), OLD
    else:
        last, floor = LastRun("earlier", "deploy", RunKind.FORWARD, OLD), OLDER

    def visit(state: _HealWorld) -> tuple[int, int]:
        cached = memo.get(state)
        if cached is not None:
            return cached
        paths, remediated = 1, 0  # no (more) alert
        if state.alerts < limits.max_alerts:
            nexts: dict[_HealWorld, tuple[str, bool]] = {}
            for i, name in enumerate(names):
                for present in _alert_facts(state.moved[i], state.last):
                    if decide(present) is not None:
                        nexts.setdefault(state._replace(alerts=state.alerts + 1), ("an alert is dropped", False))
                        continue
                    label = (f"a rollback remediation about {name} acts (fires: {present.firing}, arrived after "
                             f"the host's last move: {not present.host_moved}, window past it: "
                             f"{not present.window_covers_move})")
                    nexts.setdefault(_remediate(state, names, label, path), (label, True))
            for successor, (label, acts) in nexts.items():
                path.append(label)
                more, acted = visit(successor)
                path.pop()
                paths += more
                remediated += more if acts else acted
        memo[state] = (paths, remediated)
        return paths, remediated

    return visit(_HealWorld(world.hosts, moved, last, floor))


def _remediate(state: _HealWorld, names: Sequence[str], label: str, path: Sequence[str]) -> _HealWorld:
    """The rollback remediation: every host to its `previous` (what rust_release does), checked."""
    hosts = tuple(h._replace(release=h.previous, previous=h.release) for h in state.hosts)
    floor = RELEASE_ORDER.index(state.floor)
    for name, host in zip(names, hosts, strict=True):
        if RELEASE_ORDER.index(host.release) < floor:
            raise ModelViolation(f"{name}: a rollback remediation takes it to the {host.release} release, past the "
                                 f"floor ({state.floor}: what the last finished run left serving)", [*path, label])
    releases = {h.release for h in hosts}
    if len(releases) != 1:
        raise ModelViolation(f"a rollback remediation leaves the fleet on {', '.join(sorted(releases))}",
                             [*path, label])
    served = releases.pop()
    return _HealWorld(hosts, tuple(True for _ in hosts), LastRun("heal", "heal", RunKind.BACKWARD, served),
                      served, state.alerts + 1)


def path_lower_bound(batches: Sequence[Sequence[str]], limits: Limits | None = None) -> int:
    """A number of distinct paths every exhaustive exploration must at least cover.

    The fault-free path, plus one path per (host, forward step) failing first, plus (with
    crashes allowed) one per forward step the controller dies in: each of these leaves the
    fault-free path at a different point, so they are pairwise distinct.
    """
    limits = limits or Limits()
    hosts = sum(len(b) for b in batches)
    bound = 1
    if limits.max_faults > 0:
        bound += len(FORWARD) * hosts
    if limits.max_crashes > 0:
        bound += len(FORWARD) * len(batches)
    return bound


def rollout_configs(max_hosts: int) -> Iterable[list[list[str]]]:
    """Every uniform batching of 1..max_hosts hosts (batch sizes 1..N), and canary-first ones."""
    for total in range(1, max_hosts + 1):
        hosts = [f"h{i + 1}" for i in range(total)]
        seen: set[str] = set()
        for size in range(1, total + 1):
            for canary in (0, 1) if total > 1 else (0,):
                batches = plan_batches(hosts, size, canary_hosts=canary)
                key = repr(batches)
                if key not in seen:
                    seen.add(key)
                    yield batches
