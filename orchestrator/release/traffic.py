"""Traffic-aware releases: the load balancer, blue-green switches and canary by traffic weight.

The app hosts are split into two colours by their index in name order (even: blue, odd: green).
One colour serves (weight > 0 in HAProxy), the other is idle (weight 0) and keeps its release
running. A release goes to the idle colour (the host-level deploy of orchestrator.release.hosts,
limited to those hosts), passes its gates, and then gets the traffic:

- blue-green: a bounded smoke load straight to the idle hosts must show an error ratio and mean
  latency within the environment's limits; with a monitoring host and service.metrics, the idle
  hosts' own request counters (the service job), as Prometheus scraped them after the smoke load,
  must also show an error ratio within the limit. Then one switch of weights (idle 100, active 0).
- canary-traffic (what `canary` means when the environment has a load-balancer host; without one
  `canary` is the host-level canary, `canary-hosts` always is): the idle colour's share rises
  through rollout.traffic_steps; after each
  rollout.step_hold a gate measures the new colour's servers over the step and decides go or
  roll back. With a monitoring host (monitoring.enabled and a host in group monitoring) the gate
  queries Prometheus there: the error ratio from the service's own counters over the step when
  service.metrics names them, else from HAProxy's exporter on the LB host (responses by class,
  connection and response errors), and HAProxy's mean response time; without one it reads the
  per-server counters from HAProxy directly (`show stat`). A rollback puts every request back on the old
  colour.

After a failed gate the idle hosts are also put back on the release they had (playbooks/
rollback.yml, no traffic reaches them meanwhile), so the fleet ends on the releases it had.

Weights change through HAProxy's admin socket (no reload: no request is lost) by a helper the
haproxy role installs on the LB host, run over SSH; HAProxy's own server-state file keeps them
across reloads and restarts. Which colour serves and which is idle is read from HAProxy before any
traffic move (`LoadBalancer.traffic_state`): `.orchestrate/<env>/traffic.json` is this
controller's cache, never the truth, so a second checkout, or one whose cache was deleted, deploys
to the colour HAProxy gives no traffic. `switch_back` (what `orchestrate rollback` does after a
traffic release) is the one weight change back to the colour that served before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.types import parse_duration
from orchestrator.errors import HealthGateFailed, UsageError
from orchestrator.fleet.guard import own_network
from orchestrator.fleet.inventory import app_hosts
from orchestrator.fleet.playbooks import run_env_playbook
from orchestrator.monitoring.rules import error_counters
from orchestrator.release.hosts import DeployRequest, deploy, role_vars
from orchestrator.release.probe import fleet_status
from orchestrator.release.results import ReleaseRun, previous_to_restore
from orchestrator.release.strategies import RanStrategy, TrafficStrategy, note_host_deploy
from orchestrator.release.transitions import HostTransitions
from orchestrator.runs.backend import coordination_for
from orchestrator.tools.ansible import HostEvent, PlaybookResult
from orchestrator.traffic.gates import (
    GateDecision,
    Prometheus,
    _prometheus_decision,
    _service_decision,
    load_gate,
    monitoring_host,
    stat_gate,
)
from orchestrator.traffic.lb import LoadBalancer, configure_lb, has_lb_host, lb_url
from orchestrator.traffic.loadgen import LoadGenerator, LoadReport, LoadSpec
from orchestrator.traffic.state import FULL, Color, TrafficState, colors, other, read_state, split_weights, write_state

#: smoke requests per idle host for the blue-green gate
SMOKE_REQUESTS = 40


EventSink = Callable[[HostEvent], None]


@dataclass
class TrafficRelease:
    """Outcome of a blue-green or canary-traffic release, or of a switch back."""

    env: str
    strategy: str
    state: Literal["switched", "promoted", "rolled_back", "switched_back"]
    active: Color
    previous: Color | None
    weights: dict[str, int]
    decisions: list[GateDecision] = field(default_factory=list)
    deploy: ReleaseRun | None = None
    switch_seconds: float = 0.0
    """Time of the weight change(s) that moved the traffic (admin socket over SSH)."""
    release: str | None = None
    restored_hosts: dict[str, str] = field(default_factory=dict)
    """Idle hosts put back on their release after a failed gate: {host: release}."""
    restore: PlaybookResult | None = None
    synthetic_load: dict[str, Any] | None = None
    """rollout.canary_load's bounded load during the steps: {rate, requests, failed}; None: off."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "env": self.env, "strategy": self.strategy, "state": self.state, "active": self.active,
            "previous": self.previous, "weights": self.weights, "release": self.release,
            "switch_seconds": round(self.switch_seconds, 3), "restored_hosts": self.restored_hosts,
            "synthetic_load": self.synthetic_load,
            "restore": self.restore.as_dict() if self.restore is not None else None,
            "decisions": [d.as_dict() for d in self.decisions],
            "deploy": self.deploy.as_dict() if self.deploy is not None else None,
        }


class TrafficGateFailed(HealthGateFailed):
    """The new colour failed a traffic gate; the traffic is back on the old colour (exit 3)."""

    def __init__(self, message: str, result: TrafficRelease, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


@dataclass(frozen=True)
class TrafficRequest:
    """A blue-green or canary-traffic release."""

    deploy: DeployRequest
    strategy: TrafficStrategy
    steps: tuple[int, ...] | None = None
    """Override of rollout.traffic_steps."""
    hold: float | None = None
    """Override of rollout.step_hold, in seconds."""
    transitions: HostTransitions | None = None
    """The journal run's host state machine: the idle colour's hosts move through it as the
    host-level deploy goes (staged, switched, verified) and back (rolled_back) after a failed gate."""


DecisionSink = Callable[[GateDecision], None]


def _audit(loaded: LoadedEnvironment, decision: GateDecision, *, strategy: str, release: str | None,
           run_id: str | None) -> None:
    audit = coordination_for(loaded).audit()
    try:
        audit.record(command=f"{strategy} gate", outcome="go" if decision.go else "rollback",
                     run_id=run_id, release=release, details=decision.as_dict())
    finally:
        audit.close()


def _prepare_idle(loaded: LoadedEnvironment, lb: LoadBalancer, request: TrafficRequest,
                  on_event: EventSink | None) -> tuple[Color, Color, dict[Color, list[str]], ReleaseRun]:
    """Drain the idle colour, deploy the release to it (host-level gate), wait until the LB sees it up."""
    hosts = app_hosts(loaded)
    groups = {c: [h.name for h in hs] for c, hs in colors(hosts).items()}
    if not groups["blue"] or not groups["green"]:
        raise UsageError(f"{request.strategy} needs at least 2 app hosts; {loaded.name} has {len(hosts)}")
    # HAProxy says which colour serves, never the cache: the release goes to the other one
    servers = lb.stats()
    state = lb.traffic_state(servers)
    active: Color = state.active or "blue"
    idle = other(active)
    drained = {n: FULL for n in groups[active]} | {n: 0 for n in groups[idle]}
    if any(int(servers.get(n, {}).get("weight", -1)) != w for n, w in drained.items()):
        lb.set_weights(drained)
        # requests already on their way to the idle hosts finish before those restart
        time.sleep(0.5)
    state = read_state(loaded)
    state.active = active
    write_state(loaded, state)
    run = deploy(loaded, DeployRequest(
        release_path=request.deploy.release_path, strategy="rolling", tuned=request.deploy.tuned,
        secret_vars=request.deploy.secret_vars, build_env=request.deploy.build_env, prepared=request.deploy.prepared,
        limit=",".join(groups[idle])), on_event=on_event, transitions=request.transitions)
    lb.wait_up(groups[idle])
    return active, idle, groups, run


def _restore_idle(loaded: LoadedEnvironment, result: TrafficRelease, on_event: EventSink | None,
                  transitions: HostTransitions | None = None) -> str | None:
    """Put the idle hosts that switched in this release back on the release they had (no traffic
    reaches them: their weight is 0). Returns a hint when that failed, else None."""
    run = result.deploy
    if run is None:
        return None
    restore = {h.name: h.release_before for h in run.hosts if h.switched and h.release_before and not h.failed}
    if not restore:
        return None
    result.restored_hosts = restore
    result.restore = run_env_playbook(
        loaded, "rollback.yml",
        {**role_vars(loaded, None), "rollback_targets": restore,
         "rollback_previous": previous_to_restore(run.hosts, restore), "rollback_hosts": ",".join(sorted(restore))},
        run_id=f"{run.run_id}-restore", mitogen=True,
        on_event=transitions.events("restore", on_event) if transitions is not None else on_event)
    if transitions is not None:
        transitions.check()
    if result.restore.ok:
        return None
    return f"putting the idle hosts back failed: {result.restore.summary_line() or result.restore.status}"


def _switch(loaded: LoadedEnvironment, lb: LoadBalancer, to: Color, groups: Mapping[Color, list[str]],
            *, release: str | None = None) -> tuple[dict[str, int], float]:
    weights = {n: FULL for n in groups[to]} | {n: 0 for n in groups[other(to)]}
    started = time.monotonic()
    lb.set_weights(weights)
    seconds = time.monotonic() - started
    state = read_state(loaded)
    state.previous, state.active = other(to), to
    if release:
        state.releases[to] = release
    write_state(loaded, state)
    return weights, seconds


def blue_green(loaded: LoadedEnvironment, request: TrafficRequest, *, on_event: EventSink | None = None,
               on_decision: DecisionSink | None = None, run_id: str | None = None) -> TrafficRelease:
    """Deploy to the idle colour, gate it with a smoke load (and Prometheus' error ratio of the idle
    hosts when the environment has a monitoring host), switch all traffic to it.

    The old colour keeps running on its release: `switch_back` returns the traffic to it.
    Raises TrafficGateFailed (exit 3) when the gate fails; the traffic then never moved.
    """
    rollout = loaded.env.rollout
    mon = monitoring_host(loaded)
    prometheus = Prometheus(loaded, mon) if mon is not None else None
    lb = LoadBalancer(loaded)
    active, idle, groups, run = _prepare_idle(loaded, lb, request, on_event)
    by_name = {h.name: h for h in app_hosts(loaded)}
    reports = []
    for name in groups[idle]:
        url = f"http://{by_name[name].address}:{loaded.env.service.port}/"
        reports.append(LoadGenerator(LoadSpec(url=url, requests=SMOKE_REQUESTS, duration=10, concurrency=2),
                                     network=own_network(loaded)).run())
    merged = LoadReport(url="idle colour", samples=[s for r in reports for s in r.samples])
    max_error_ratio, max_latency_ms = rollout.max_error_ratio, 1000 * parse_duration(rollout.max_latency)
    decision = load_gate(0, merged, max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms)
    counters = error_counters(loaded.env)
    if prometheus is not None and counters is not None and counters.source == "service":
        # the service's own error ratio; without service.metrics the smoke load is the measure (the
        # idle colour gets no traffic through the load balancer to count)
        decision = _service_decision(prometheus, counters, groups[idle], decision,
                                     max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms)
    _audit(loaded, decision, strategy="blue-green", release=run.target, run_id=run_id)
    if on_decision is not None:
        on_decision(decision)
    state = read_state(loaded)
    if not decision.go:
        result = TrafficRelease(env=loaded.name, strategy="blue-green", state="rolled_back", active=active,
                                previous=state.previous, weights=state.weights, decisions=[decision],
                                deploy=run, release=run.target)
        hint = _restore_idle(loaded, result, on_event, request.transitions)
        raise TrafficGateFailed(f"{run.target} failed the blue-green gate on {idle} ({decision.reason}); "
                                f"the traffic stays on {active}", result, hint=hint)
    weights, seconds = _switch(loaded, lb, idle, groups, release=run.target)
    return TrafficRelease(env=loaded.name, strategy="blue-green", state="switched", active=idle, previous=active,
                          weights=weights, decisions=[decision], deploy=run, switch_seconds=seconds,
                          release=run.target)


def canary_traffic(loaded: LoadedEnvironment, request: TrafficRequest, *, on_event: EventSink | None = None,
                   on_decision: DecisionSink | None = None, run_id: str | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> TrafficRelease:
    """Deploy to the idle colour, then raise its share of the traffic step by step behind gates.

    After each step's hold the gate queries Prometheus for the new colour's servers over the step
    when the environment has a monitoring host, else it compares HAProxy's counters of the new
    colour before and after the hold. A no-go puts all traffic back on the old colour and raises
    TrafficGateFailed.
    """
    rollout = loaded.env.rollout
    steps = tuple(request.steps or rollout.traffic_steps)
    hold = request.hold if request.hold is not None else parse_duration(rollout.step_hold)
    max_error_ratio, max_latency_ms = rollout.max_error_ratio, 1000 * parse_duration(rollout.max_latency)
    mon = monitoring_host(loaded)
    prometheus = Prometheus(loaded, mon) if mon is not None else None
    lb = LoadBalancer(loaded)
    active, idle, groups, run = _prepare_idle(loaded, lb, request, on_event)
    with _synthetic_load(loaded, rollout.canary_load, hold * len(steps)) as synthetic:
        return _canary_steps(loaded, request, lb, active, idle, groups, run, steps, hold,
                             prometheus=prometheus, max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms,
                             on_event=on_event, on_decision=on_decision, run_id=run_id, sleep=sleep,
                             synthetic=synthetic)


@contextlib.contextmanager
def _synthetic_load(loaded: LoadedEnvironment, rate: float, seconds: float) -> Iterator[dict[str, Any] | None]:
    """rollout.canary_load requests per second through the LB while the canary's steps run (an
    environment without users has no traffic for the gates to judge); bounded in requests and
    time, aimed only at the project's own load balancer. Yields what it sent (filled in at the end)."""
    if rate <= 0:
        yield None
        return
    # the steps' holds plus the gates' queries and switches; stopped as soon as the steps end
    duration = min(seconds + 120.0, 3600.0)
    spec = LoadSpec(url=lb_url(loaded), requests=max(1, min(int(rate * duration), 1_000_000)), duration=duration,
                    concurrency=max(1, min(int(rate // 10) + 1, 16)), rate=rate)
    found: dict[str, Any] = {"rate": rate}
    generator = LoadGenerator(spec, network=own_network(loaded)).start()
    try:
        yield found
    finally:
        generator.stop()
        report = generator.join()
        found.update(requests=report.total, failed=report.failed)


def _canary_steps(loaded: LoadedEnvironment, request: TrafficRequest, lb: LoadBalancer, active: Color, idle: Color,
                  groups: Mapping[Color, list[str]], run: ReleaseRun, steps: tuple[int, ...], hold: float, *,
                  prometheus: Prometheus | None, max_error_ratio: float, max_latency_ms: float,
                  on_event: EventSink | None, on_decision: DecisionSink | None, run_id: str | None,
                  sleep: Callable[[float], None], synthetic: dict[str, Any] | None) -> TrafficRelease:
    decisions: list[GateDecision] = []
    switched = 0.0
    for step in steps:
        weights = split_weights(groups[idle], groups[active], step)
        started, began = time.monotonic(), time.time()
        before = lb.set_weights(weights)
        switched += time.monotonic() - started
        sleep(hold)
        if prometheus is not None:
            counters = error_counters(loaded.env)
            decision = _prometheus_decision(prometheus, lb.backend, step, groups[idle], began,
                                            max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms,
                                            service=counters if counters and counters.source == "service" else None)
        else:
            decision = stat_gate(step, before, lb.stats(), groups[idle], max_error_ratio=max_error_ratio,
                                 max_latency_ms=max_latency_ms)
        decisions.append(decision)
        _audit(loaded, decision, strategy="canary-traffic", release=run.target, run_id=run_id)
        if on_decision is not None:
            on_decision(decision)
        if not decision.go:
            back, seconds = _switch(loaded, lb, active, groups)
            state = read_state(loaded)
            state.previous = None  # nothing to switch back to: the new colour never took over
            write_state(loaded, state)
            result = TrafficRelease(env=loaded.name, strategy="canary-traffic", state="rolled_back",
                                    active=active, previous=None, weights=back, decisions=decisions,
                                    deploy=run, switch_seconds=switched + seconds, release=run.target,
                                    synthetic_load=synthetic)
            hint = _restore_idle(loaded, result, on_event, request.transitions)
            raise TrafficGateFailed(
                f"{run.target} failed the gate at {step}% of the traffic ({decision.reason}); "
                f"all traffic is back on {active}", result, hint=hint)
    weights, seconds = _switch(loaded, lb, idle, groups, release=run.target)
    return TrafficRelease(env=loaded.name, strategy="canary-traffic", state="promoted", active=idle,
                          previous=active, weights=weights, decisions=decisions, deploy=run,
                          switch_seconds=switched + seconds, release=run.target, synthetic_load=synthetic)


def _observed(loaded: LoadedEnvironment) -> TrafficState:
    """The traffic state as HAProxy runs it (with the cache's history); the cache alone when the
    environment has no load-balancer host."""
    return LoadBalancer(loaded).traffic_state() if has_lb_host(loaded) else read_state(loaded)


def switch_back_pending(loaded: LoadedEnvironment) -> bool:
    """Whether the last traffic release left a colour to switch back to (asked of HAProxy)."""
    return _observed(loaded).previous is not None


def switch_back(loaded: LoadedEnvironment) -> TrafficRelease:
    """Give all traffic back to the colour that served before the last switch (one weight change)."""
    state = _observed(loaded)
    if state.previous is None:
        raise UsageError(f"{loaded.name}: no traffic release to switch back from")
    groups = {c: [h.name for h in hs] for c, hs in colors(app_hosts(loaded)).items()}
    lb = LoadBalancer(loaded)
    target = state.previous
    weights, seconds = _switch(loaded, lb, target, groups)
    state = read_state(loaded)
    state.previous = None  # a second rollback is not a switch forward again
    release = state.releases.get(target)
    if release is None:
        # not recorded (a colour deployed before the LB was configured): what its hosts run
        on = {h.release for h in fleet_status(loaded).hosts if h.name in groups[target]}
        release = on.pop() if len(on) == 1 else None
        if release is not None:
            state.releases[target] = release
    write_state(loaded, state)
    return TrafficRelease(env=loaded.name, strategy="switch-back", state="switched_back", active=target,
                          previous=None, weights=weights, switch_seconds=seconds, release=release)


def traffic_release(loaded: LoadedEnvironment, request: TrafficRequest, *, on_event: EventSink | None = None,
                    on_decision: DecisionSink | None = None, run_id: str | None = None) -> TrafficRelease:
    """Run `request` with its strategy."""
    if request.strategy == "blue-green":
        return blue_green(loaded, request, on_event=on_event, on_decision=on_decision, run_id=run_id)
    return canary_traffic(loaded, request, on_event=on_event, on_decision=on_decision, run_id=run_id)


@dataclass
class UpDeploy:
    """What the deploy stage of `orchestrate up` did under a traffic strategy."""

    strategy: RanStrategy
    """What ran: the traffic strategy, or rolling for a first release."""
    release: str | None
    detail: dict[str, Any]
    """For the journal step (the strategy included)."""


def release_for_up(loaded: LoadedEnvironment, request: TrafficRequest, *, release_id: str | None,
                   on_event: EventSink | None = None, on_decision: DecisionSink | None = None,
                   run_id: str | None = None) -> UpDeploy:
    """The deploy stage of `orchestrate up` with a traffic strategy.

    - Nothing serves yet (no app host that the LB would send traffic to runs a release): there is no
      traffic to move, so a first release is a rolling deploy to every app host.
    - The hosts that get traffic already run `release_id`, healthy: nothing to do (the idle colour
      keeps the old release on purpose; another traffic release would flip the colours on every run).
    - Otherwise the traffic release, after configuring the LB when it was never configured from
      here or lacks an app host, so that its weights can move. TrafficGateFailed (exit 3) propagates.
    """
    state = _observed(loaded)
    names = [h.name for h in app_hosts(loaded)]
    fleet = {h.name: h for h in fleet_status(loaded).hosts}
    serving = [n for n in names if state.weights.get(n, FULL) > 0]
    if not any(fleet[n].release for n in serving if n in fleet):
        run = deploy(loaded, replace(request.deploy, strategy="rolling"), on_event=on_event,
                     transitions=request.transitions)
        note_host_deploy(loaded, run.target)
        return UpDeploy(strategy="rolling", release=run.target, detail={
            "strategy": "rolling", "release": run.target, "state": run.state, "changed": run.changed,
            "note": f"first release: nothing serves yet, so every app host gets it (no traffic for "
                    f"{request.strategy} to move)"})
    if release_id is not None and serving and all(
            n in fleet and fleet[n].release == release_id and fleet[n].healthy for n in serving):
        return UpDeploy(strategy=request.strategy, release=release_id, detail={
            "strategy": request.strategy, "release": release_id, "state": "unchanged",
            "active": state.active, "note": "the hosts that get traffic already serve this release"})
    if not set(names) <= set(state.weights):
        configure_lb(loaded, on_event=on_event, tuned=request.deploy.tuned)
    result = traffic_release(loaded, request, on_event=on_event, on_decision=on_decision, run_id=run_id)
    return UpDeploy(strategy=request.strategy, release=result.release, detail={
        "strategy": request.strategy, "release": result.release, "state": result.state, "active": result.active,
        "previous": result.previous, "weights": result.weights, "switch_seconds": round(result.switch_seconds, 3),
        "decisions": [d.as_dict() for d in result.decisions]})
