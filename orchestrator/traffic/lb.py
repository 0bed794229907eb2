"""The load balancer: HAProxy on the environment's lb host, configured by playbooks/lb.yml and
driven at run time through the haproxy role's helper (orchestrator.tools.haproxy: weights on the
admin socket, no reload, no request lost). Here: which host, which weights, and the split.

The split is HAProxy's runtime state, read from the LB host before any traffic move
(`LoadBalancer.traffic_state`); HAProxy keeps it across reloads and restarts in its own
server-state file, so the configuration gives every server the same initial weight and a reload
never needs the controller's cache (`.orchestrate/ENV/traffic.json`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.fleet.guard import address_check
from orchestrator.fleet.inventory import Host, app_hosts, hosts_from_inventory, load_inventory
from orchestrator.fleet.playbooks import run_env_playbook
from orchestrator.tools.ansible import HostEvent, PlaybookResult
from orchestrator.tools.haproxy import HAProxyError, HAProxyRuntime, HelperMissing, Servers
from orchestrator.traffic.state import FULL, TrafficError, TrafficState, colors, from_runtime, read_state, write_state

#: how long the LB's health checks may take to see a freshly deployed colour as up
UP_TIMEOUT = 15.0


EventSink = Callable[[HostEvent], None]


def lb_host(loaded: LoadedEnvironment) -> Host:
    """The environment's load-balancer host (the first of group lb)."""
    path = loaded.paths.inventory
    if not path.exists():
        raise UsageError(f"{loaded.name} has no inventory yet ({path}): run `orchestrate up {loaded.name}` first")
    found = [h for h in hosts_from_inventory(load_inventory(path)) if "lb" in h.groups]
    if not found:
        raise UsageError(f"{loaded.name} has no load-balancer host (group lb): set terraform.vars.lb_count: 1")
    return found[0]


def lb_url(loaded: LoadedEnvironment, path: str = "/") -> str:
    """URL of the service through the load balancer."""
    return f"http://{lb_host(loaded).address}:{FRONTEND_PORT}{path}"


FRONTEND_PORT = 80


def lb_vars(loaded: LoadedEnvironment) -> dict[str, Any]:
    """Extra vars of playbooks/lb.yml (pure given the hosts).

    Every server gets the same initial weight: the split is HAProxy's runtime state, which its
    server-state file carries across reloads (HAProxy restores a saved weight only while the
    configured initial weight stays what it was). A server new to the backend starts at FULL.
    """
    service = loaded.env.service
    hosts = app_hosts(loaded)
    return {
        "haproxy_backend_name": service.name,
        "haproxy_backend_port": service.port,
        "haproxy_frontend_port": FRONTEND_PORT,
        "haproxy_health_path": service.health.path,
        "haproxy_backends": [{"name": h.name, "address": h.private_address or h.address, "weight": FULL}
                             for h in hosts],
    }


def configure_lb(loaded: LoadedEnvironment, *, on_event: EventSink | None = None,
                 tuned: bool = True) -> PlaybookResult:
    """Run playbooks/lb.yml (the reload keeps the running split); TrafficError when it fails.

    HAProxy's server-state file carries the weights across the reload. Should a server come back
    with another weight (an LB whose earlier configuration carried the weights itself, so the
    saved state does not apply), its running weight of before is set again. The cache is
    refreshed from HAProxy afterwards.
    """
    before = _running_weights(loaded)
    result = run_env_playbook(loaded, "lb.yml", lb_vars(loaded), tuned=tuned, on_event=on_event)
    if not result.ok:
        raise TrafficError(f"configuring the load balancer failed: {result.summary_line() or result.status}")
    lb = LoadBalancer(loaded)
    servers = lb.stats()
    lost = {name: weight for name, weight in before.items()
            if name in servers and int(servers[name].get("weight", -1)) != weight}
    if lost:
        servers = lb.set_weights(lost)
    lb.traffic_state(servers)
    return result


def _running_weights(loaded: LoadedEnvironment) -> dict[str, int]:
    """The weights HAProxy runs with now; {} when it is not configured or not running yet."""
    if not has_lb_host(loaded):
        return {}
    try:
        return {name: int(entry.get("weight", 0)) for name, entry in LoadBalancer(loaded).stats().items()}
    except HAProxyError:
        return {}


class LoadBalancer:
    """The LB host's HAProxy, driven over SSH through the role's helper."""

    def __init__(self, loaded: LoadedEnvironment) -> None:
        self.loaded = loaded
        self.backend = loaded.env.service.name
        self.host = lb_host(loaded)
        self.address = address_check(loaded)(self.host.address)
        self.inventory = load_inventory(loaded.paths.inventory)
        self.runtime = HAProxyRuntime(self.inventory, self.address, name=self.host.name)

    def stats(self) -> Servers:
        """Per-server weight, status and counters (`show stat` + `get weight`)."""
        return self.runtime.state(self.backend)

    def traffic_state(self, servers: Servers | None = None) -> TrafficState:
        """The split as HAProxy runs it (`servers`, else asked now), with the cache's history
        (orchestrator.traffic.state.from_runtime); the cache is rewritten with it.

        An LB whose HAProxy was never configured from here (no helper yet) has no split: the
        cache's history with no weights.
        """
        try:
            running = servers if servers is not None else self.stats()
        except HelperMissing:
            return TrafficState(releases=read_state(self.loaded).releases)
        groups = {color: [h.name for h in hosts] for color, hosts in colors(app_hosts(self.loaded)).items()}
        weights = {name: int(entry.get("weight", 0)) for name, entry in running.items()}
        state = from_runtime(weights, groups, read_state(self.loaded))
        write_state(self.loaded, state)
        return state

    def set_weights(self, weights: Mapping[str, int]) -> Servers:
        """Change the running weights (admin socket; HAProxy's server-state file keeps them across
        reloads); the cache follows. Returns the servers as HAProxy runs them afterwards."""
        servers = self.runtime.set_weights(self.backend, weights)
        state = read_state(self.loaded)
        state.weights = {name: int(entry.get("weight", 0)) for name, entry in servers.items()}
        write_state(self.loaded, state)
        return servers

    def wait_up(self, names: list[str], timeout: float = UP_TIMEOUT) -> None:
        """Wait until HAProxy's health checks see every server of `names` up."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            down = [n for n in names if not str(stats.get(n, {}).get("status", "")).startswith("UP")]
            if not down:
                return
            if time.monotonic() > deadline:
                raise TrafficError(f"the load balancer still sees {', '.join(down)} down after {timeout:.0f} s")
            time.sleep(0.25)


def has_lb_host(loaded: LoadedEnvironment) -> bool:
    """Whether the environment's inventory has a host in group lb (False before provisioning)."""
    path = loaded.paths.inventory
    return path.exists() and any("lb" in h.groups for h in hosts_from_inventory(load_inventory(path)))


def check_split(releases: Mapping[str, str | None], weights: Mapping[str, int],
                expected: str | None) -> tuple[str | None, dict[str, Any]]:
    """Whether the app hosts are as a release behind the LB leaves them (pure).

    The hosts that get traffic (weight > 0) are on one release, `expected` when given; the idle ones
    (weight 0: after blue-green, the old colour kept for the switch back) on one release of their
    own. Health is checked apart. Returns (what is wrong or None, {release, serving, idle}) where
    serving and idle map host -> release.
    """
    serving = {n: r for n, r in sorted(releases.items()) if weights.get(n, 0) > 0}
    idle = {n: r for n, r in sorted(releases.items()) if n in weights and weights[n] == 0}
    missing = sorted(n for n in releases if n not in weights)
    on = set(serving.values())
    detail: dict[str, Any] = {"release": next(iter(on)) if len(on) == 1 else None, "serving": serving, "idle": idle}
    listing = ", ".join(sorted(str(r) for r in on))
    problem: str | None = None
    if missing:
        problem = f"not in the load balancer's backend: {', '.join(missing)}"
    elif not serving:
        problem = "no app host gets traffic from the load balancer (every weight is 0)"
    elif len(on) != 1 or None in on or (expected is not None and on != {expected}):
        problem = f"the hosts that get traffic are on {listing}" + (f", expected {expected}" if expected else "")
    elif idle and (len(set(idle.values())) != 1 or None in idle.values()):
        problem = ("the idle hosts are on " + ", ".join(f"{n}: {r or 'no release'}" for n, r in idle.items())
                   + "; an idle colour keeps one release")
    return problem, detail


def verify_split(loaded: LoadedEnvironment, releases: Mapping[str, str | None],
                 expected: str | None) -> tuple[str | None, dict[str, Any]] | None:
    """check_split against the LB's running weights, then wait until the LB sees every host that
    gets traffic up; None when the environment has no LB host."""
    if not has_lb_host(loaded):
        return None
    lb = LoadBalancer(loaded)
    weights = {name: int(s.get("weight", 0)) for name, s in lb.stats().items()}
    problem, detail = check_split(releases, weights, expected)
    if problem is None:
        try:
            lb.wait_up(sorted(detail["serving"]))
        except TrafficError as exc:
            problem = exc.message
    return problem, detail
