"""The load balancer: HAProxy on the environment's lb host, configured by playbooks/lb.yml and
driven at run time through the haproxy role's helper over SSH (weights on the admin socket: no
reload, no request lost).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import UsageError
from orchestrator.files import private_dir, ssh_control_dir
from orchestrator.fleet.guard import address_check
from orchestrator.fleet.inventory import Host, app_hosts, hosts_from_inventory, load_inventory
from orchestrator.fleet.playbooks import run_env_playbook
from orchestrator.tools.ansible import HostEvent, PlaybookResult
from orchestrator.tools.process import run_command
from orchestrator.traffic.state import FULL, TrafficError, backend_weights, read_state, write_state

HELPER = "/usr/local/sbin/orchestrate-haproxy"


#: how long the LB's health checks may take to see a freshly deployed colour as up
UP_TIMEOUT = 15.0


def helper_argv(action: str, backend: str, weights: Mapping[str, int] | None = None) -> list[str]:
    """The helper's argv on the LB host (pure)."""
    argv = [HELPER, action, "--backend", backend]
    if weights:
        argv.append(",".join(f"{name}={int(w)}" for name, w in sorted(weights.items())))
    return argv


def ssh_argv(inventory: Mapping[str, Any], address: str, remote: list[str]) -> list[str]:
    """ssh argv for `remote` on `address` with the inventory's user, key and known_hosts (pure)."""
    all_vars = (inventory.get("all") or {}).get("vars") or {}
    user = str(all_vars.get("ansible_user") or "root")
    argv = ["ssh"]
    key = all_vars.get("ansible_ssh_private_key_file")
    if key:
        argv += ["-i", str(key)]
    argv += shlex.split(str(all_vars.get("ansible_ssh_common_args") or ""))
    # one master connection per LB host, shared by the weight changes of a release: a switch
    # back is then one round trip on an open connection
    control = ssh_control_dir()
    argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ControlMaster=auto",
             "-o", f"ControlPath={control}/tr-%C", "-o", "ControlPersist=60s",
             f"{user}@{address}", shlex.join(remote)]
    return argv

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


def lb_vars(loaded: LoadedEnvironment, weights: Mapping[str, int]) -> dict[str, Any]:
    """Extra vars of playbooks/lb.yml (pure given the hosts)."""
    service = loaded.env.service
    hosts = app_hosts(loaded)
    return {
        "haproxy_backend_name": service.name,
        "haproxy_backend_port": service.port,
        "haproxy_frontend_port": FRONTEND_PORT,
        "haproxy_health_path": service.health.path,
        "haproxy_backends": [{"name": h.name, "address": h.private_address or h.address,
                              "weight": int(weights.get(h.name, FULL))} for h in hosts],
    }


def configure_lb(loaded: LoadedEnvironment, *, on_event: EventSink | None = None,
                 tuned: bool = True) -> PlaybookResult:
    """Run playbooks/lb.yml with the recorded weights; TrafficError when it fails."""
    hosts = app_hosts(loaded)
    weights = backend_weights(loaded, hosts)
    result = run_env_playbook(loaded, "lb.yml", lb_vars(loaded, weights), tuned=tuned, on_event=on_event)
    if not result.ok:
        raise TrafficError(f"configuring the load balancer failed: {result.summary_line() or result.status}")
    state = read_state(loaded)
    state.weights = weights
    write_state(loaded, state)
    return result


class LoadBalancer:
    """The LB host's HAProxy, driven over SSH through the role's helper."""

    def __init__(self, loaded: LoadedEnvironment) -> None:
        self.loaded = loaded
        self.backend = loaded.env.service.name
        self.host = lb_host(loaded)
        self.address = address_check(loaded)(self.host.address)
        self.inventory = load_inventory(loaded.paths.inventory)

    def _call(self, remote: list[str]) -> dict[str, Any]:
        private_dir(ssh_control_dir())
        result = run_command(ssh_argv(self.inventory, self.address, remote), timeout=30, check=False)
        if result.returncode != 0:
            raise TrafficError(f"{self.host.name}: {shlex.join(remote)} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-500:]}")
        try:
            data = json.loads(result.stdout)
        except ValueError:
            raise TrafficError(f"{self.host.name}: the helper answered no JSON: {result.stdout[-300:]!r}") from None
        return dict(data.get("servers") or {})

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-server weight, status and counters (`show stat` + `get weight`)."""
        return self._call(helper_argv("state", self.backend))

    def set_weights(self, weights: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """Change the running weights (admin socket) and persist them in the config; record them."""
        servers = self._call(helper_argv("set", self.backend, weights))
        state = read_state(self.loaded)
        state.weights.update({k: int(v) for k, v in weights.items()})
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
