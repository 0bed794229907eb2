"""Which rollout strategy runs: `canary` means canary by traffic weight behind a load balancer and
canary hosts without one; blue-green and canary-traffic move weights, rolling and canary-hosts
deploy host by host.
"""

from __future__ import annotations

from typing import Literal, TypeGuard

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.traffic.lb import has_lb_host
from orchestrator.traffic.state import COLORS, read_state, state_path, write_state

TrafficStrategy = Literal["blue-green", "canary-traffic"]


#: what runs for a rollout.strategy / `--strategy` (resolve_strategy): `canary` is resolved away
RanStrategy = Literal["rolling", "canary-hosts", "canary-traffic", "blue-green"]


def pick_strategy(requested: str, *, lb: bool) -> RanStrategy:
    """The strategy that runs for `requested` (pure): `canary` is the canary by traffic weight
    when the environment has a load balancer (`lb`), the host-level canary otherwise."""
    if requested == "canary":
        return "canary-traffic" if lb else "canary-hosts"
    if requested == "rolling":
        return "rolling"
    if requested == "canary-hosts":
        return "canary-hosts"
    if requested == "canary-traffic":
        return "canary-traffic"
    if requested == "blue-green":
        return "blue-green"
    raise UsageError(f"strategy {requested!r} is not one of rolling, canary, canary-hosts, canary-traffic, blue-green")


def is_traffic(strategy: str) -> TypeGuard[TrafficStrategy]:
    """Whether `strategy` (as resolved) moves traffic on the load balancer."""
    return strategy in ("blue-green", "canary-traffic")


def host_strategy(strategy: RanStrategy) -> Literal["rolling", "canary"]:
    """orchestrator.release.hosts' strategy for a host-level one."""
    return "canary" if strategy == "canary-hosts" else "rolling"


def resolve_strategy(loaded: LoadedEnvironment, requested: str | None) -> RanStrategy:
    """What `requested` (None: rollout.strategy) runs on `loaded`, after its inventory.

    A traffic strategy without a load-balancer host is a UsageError, before anything is touched.
    """
    lb = has_lb_host(loaded)
    ran = pick_strategy(requested or loaded.env.rollout.strategy, lb=lb)
    if is_traffic(ran) and not lb:
        raise UsageError(f"{ran} moves traffic on a load balancer, and {loaded.name}'s inventory has no host in "
                         f"group lb: set terraform.vars.lb_count: 1 and run `orchestrate up {loaded.name}`")
    return ran


def note_host_deploy(loaded: LoadedEnvironment, release: str | None) -> None:
    """After a host-level deploy behind the LB: every app host now runs `release`, so there is no
    colour left to switch back to (`orchestrate rollback` is then the host-level rollback). The
    release of both colours is recorded, so that a later switch back can name what it returns to."""
    if not state_path(loaded).exists() and not has_lb_host(loaded):
        return
    state = read_state(loaded)
    state.previous = None
    if release:
        state.releases = dict.fromkeys(COLORS, release)
    write_state(loaded, state)
