"""Traffic-aware releases: the load balancer, blue-green switches and canary by traffic weight.

The app hosts are split into two colours by their index in name order (even: blue, odd: green).
One colour serves (weight > 0 in HAProxy), the other is idle (weight 0) and keeps its release
running. A release goes to the idle colour (the host-level deploy of orchestrator.deploy,
limited to those hosts), passes its gates, and then gets the traffic:

- blue-green: a bounded smoke load straight to the idle hosts must show an error ratio and mean
  latency within the environment's limits; with a monitoring host, the idle hosts' own request
  counters (the service job), as Prometheus scraped them after the smoke load, must also show an
  error ratio within the limit. Then one switch of weights (idle 100, active 0).
- canary-traffic (what `canary` means when the environment has a load-balancer host; without one
  `canary` is the host-level canary, `canary-hosts` always is): the idle colour's share rises
  through rollout.traffic_steps; after each
  rollout.step_hold a gate measures the new colour's servers over the step and decides go or
  roll back. With a monitoring host (monitoring.enabled and a host in group monitoring) the gate
  queries Prometheus there, which scrapes HAProxy's exporter on the LB host (responses by class,
  connection and response errors, mean response time); without one it reads the same per-server
  counters from HAProxy directly (`show stat`). A rollback puts every request back on the old
  colour.

After a failed gate the idle hosts are also put back on the release they had (playbooks/
rollback.yml, no traffic reaches them meanwhile), so the fleet ends on the releases it had.

Weights change through HAProxy's admin socket (no reload: no request is lost) by a helper the
haproxy role installs on the LB host, run over SSH; the helper writes them into the config too,
so a reload keeps them. The controller keeps the split in `.orchestrate/<env>/traffic.json`, which
also renders the LB config (playbooks/lb.yml). `switch_back` (what `orchestrate rollback` does
after a traffic release) is the one weight change back to the colour that served before.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeGuard

from orchestrator.audit import AuditLog
from orchestrator.config import LoadedEnvironment, TerraformLocal, parse_duration
from orchestrator.deploy import (
    DeployRequest,
    HostTransitions,
    ReleaseRun,
    deploy,
    previous_to_restore,
    role_vars,
    status,
)
from orchestrator.errors import HealthGateFailed, OrchestratorError, UsageError
from orchestrator.hosts.local import FleetNetwork
from orchestrator.inventory import Host, allowed_networks, app_hosts, hosts_from_inventory, load_inventory
from orchestrator.loadgen import LoadGenerator, LoadReport, LoadSpec
from orchestrator.monitoring import HAPROXY_JOB, SERVICE_JOB
from orchestrator.tools.ansible import HostEvent, PlaybookResult, PlaybookRun, new_run_id, run_playbook
from orchestrator.tools.process import run_command

Color = Literal["blue", "green"]
COLORS: tuple[Color, Color] = ("blue", "green")
STATE_FILE = "traffic.json"
HELPER = "/usr/local/sbin/orchestrate-haproxy"
FULL = 100
#: smoke requests per idle host for the blue-green gate
SMOKE_REQUESTS = 40
#: how long the LB's health checks may take to see a freshly deployed colour as up
UP_TIMEOUT = 15.0
EventSink = Callable[[HostEvent], None]


class TrafficError(OrchestratorError):
    """The load balancer could not be driven (SSH, helper, missing LB host)."""


@dataclass(frozen=True)
class GateDecision:
    """One gate: what was measured on the new colour and what it decided."""

    step: int
    """Traffic percentage of the new colour during the measurement (0: smoke load before any)."""
    go: bool
    requests: int
    failed: int
    error_ratio: float
    latency_ms: float
    reason: str
    source: str
    """Where the numbers come from: `prometheus`, `haproxy show stat` or `smoke load`."""
    queries: dict[str, str] = field(default_factory=dict)
    """The PromQL behind each value when the source is Prometheus ({name: query})."""
    values: dict[str, float | None] = field(default_factory=dict)
    """What each query answered (None: no data)."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_ratio"] = round(self.error_ratio, 4)
        data["latency_ms"] = round(self.latency_ms, 1)
        if not self.queries:
            del data["queries"], data["values"]
        return data


@dataclass
class TrafficState:
    """The split the controller last set: weights per app host and which colour serves."""

    weights: dict[str, int] = field(default_factory=dict)
    active: Color | None = None
    previous: Color | None = None
    """The colour that served before the last switch (the target of a switch back)."""
    releases: dict[str, str] = field(default_factory=dict)
    """Release per colour, as far as traffic releases know."""

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "active": self.active, "previous": self.previous,
                "releases": self.releases}


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


# --- pure helpers (unit-tested) ------------------------------------------------------------------


def colors(hosts: list[Host]) -> dict[Color, list[Host]]:
    """Blue: the app hosts at even positions in name order; green: the odd ones."""
    ordered = sorted(hosts, key=lambda h: h.name)
    return {"blue": ordered[0::2], "green": ordered[1::2]}


def other(color: Color) -> Color:
    return "green" if color == "blue" else "blue"


def split_weights(new: list[str], old: list[str], percent: int) -> dict[str, int]:
    """HAProxy weights (0-256) giving the `new` servers `percent`% of the requests together.

    Per-server weights are scaled by the size of the other side so that the share is exact
    whatever the colours' sizes, then reduced to fit HAProxy's range.
    """
    if not 0 <= percent <= FULL:
        raise UsageError(f"{percent} is not a percentage")
    if not new or not old:
        raise UsageError("both colours need at least one host")
    w_new, w_old = percent * len(old), (FULL - percent) * len(new)
    divisor = math.gcd(w_new, w_old) or 1
    w_new, w_old = w_new // divisor, w_old // divisor
    top = max(w_new, w_old)
    if top > 256:
        w_new, w_old = round(w_new * 256 / top), round(w_old * 256 / top)
        # rounding must not hide a side that should get some traffic
        w_new = max(w_new, 1) if percent > 0 else 0
        w_old = max(w_old, 1) if percent < FULL else 0
    weights = {name: w_new for name in new}
    weights.update({name: w_old for name in old})
    return weights


def served_share(weights: Mapping[str, int], names: list[str]) -> float:
    """Share of the requests the servers `names` get under `weights` (round robin)."""
    total = sum(weights.values())
    return sum(weights.get(n, 0) for n in names) / total if total else 0.0


def stat_gate(step: int, before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
              servers: list[str], *, max_error_ratio: float, max_latency_ms: float,
              min_requests: int = 1) -> GateDecision:
    """Gate on the counters of `servers` between two `show stat` readings.

    Responses are the hrsp_* counters; failures are 5xx plus connection and response errors.
    The latency is HAProxy's mean response time of the servers (`rtime`, last 1024 requests),
    weighted by their responses. No traffic at all is a no-go: nothing was measured.
    """
    requests = failed = 0
    latency_sum = 0.0
    for name in servers:
        a, b = after.get(name, {}), before.get(name, {})

        def delta(key: str, a: Mapping[str, Any] = a, b: Mapping[str, Any] = b) -> int:
            return max(0, int(a.get(key, 0)) - int(b.get(key, 0)))

        answered = sum(delta(k) for k in ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"))
        errors = delta("hrsp_5xx") + delta("eresp") + delta("econ")
        requests += answered + delta("eresp") + delta("econ")
        failed += errors
        latency_sum += float(a.get("rtime", 0)) * answered
    answered_total = requests - sum(
        max(0, int(after.get(n, {}).get(k, 0)) - int(before.get(n, {}).get(k, 0)))
        for n in servers for k in ("eresp", "econ"))
    latency = latency_sum / answered_total if answered_total else 0.0
    ratio = failed / requests if requests else 0.0
    if requests < min_requests:
        go, reason = False, f"no traffic reached the new colour ({requests} requests)"
    elif ratio > max_error_ratio:
        go, reason = False, f"error ratio {ratio:.3f} above {max_error_ratio}"
    elif latency > max_latency_ms:
        go, reason = False, f"mean latency {latency:.0f} ms above {max_latency_ms:.0f} ms"
    else:
        go, reason = True, "within limits"
    return GateDecision(step=step, go=go, requests=requests, failed=failed, error_ratio=ratio,
                        latency_ms=latency, reason=reason, source="haproxy show stat")


#: port of Prometheus' HTTP API on the monitoring host (roles/prometheus prometheus_listen_address)
PROMETHEUS_PORT = 9090


def promql_servers(names: list[str]) -> str:
    """A PromQL string literal body matching exactly `names` with `=~` (pure; anchored by Prometheus)."""
    # regex metacharacters escaped for RE2, then the backslashes for the PromQL string literal
    pattern = "|".join(re.sub(r"([^A-Za-z0-9_-])", r"\\\1", n) for n in sorted(names))
    return pattern.replace("\\", "\\\\").replace('"', '\\"')


def prometheus_queries(backend: str, servers: list[str], window: str) -> dict[str, str]:
    """The gate's PromQL over the last `window` for `servers` of HAProxy backend `backend` (pure).

    Failures are 5xx answers plus connection and response errors, as in the `show stat` gate;
    the latency is HAProxy's mean response time of the servers (last 1024 requests), averaged
    over the window and the servers.
    """
    sel = f'job="{HAPROXY_JOB}",proxy="{backend}",server=~"{promql_servers(servers)}"'
    errors = " + ".join(f"sum(increase({metric}{{{sel}}}[{window}]))" for metric in
                        ("haproxy_server_connection_errors_total", "haproxy_server_response_errors_total"))
    answered = f"sum(increase(haproxy_server_http_responses_total{{{sel}}}[{window}]))"
    failed = f'sum(increase(haproxy_server_http_responses_total{{{sel},code="5xx"}}[{window}])) + {errors}'
    requests = f"{answered} + {errors}"
    return {
        "requests": requests,
        "failed": failed,
        "error_ratio": f"({failed}) / ({requests})",
        "latency_seconds": f"avg(avg_over_time(haproxy_server_response_time_average_seconds{{{sel}}}[{window}]))",
    }


def service_queries(hosts: list[str]) -> dict[str, str]:
    """PromQL of the service's own request counters on `hosts`, as last scraped (pure).

    Not increase() over the smoke load: the deploy has just restarted the service, and a series
    such as the first `/` answers appears with its value already up (increase() misses a series'
    first sample). The counters of the fresh process are the new release's requests: deploy and
    LB health checks and the smoke load. Prometheus' scrapes of /metrics are left out; a release
    without any 5xx has no such series, hence `or vector(0)`.
    """
    sel = f'job="{SERVICE_JOB}",host=~"{promql_servers(hosts)}",path!="/metrics"'
    requests = f"sum(hello_requests_total{{{sel}}})"
    failed = f'(sum(hello_requests_total{{{sel},code=~"5.."}}) or vector(0))'
    return {"requests": requests, "failed": failed, "error_ratio": f"{failed} / {requests}"}


def prometheus_gate(step: int, queries: Mapping[str, str], values: Mapping[str, float | None], *,
                    max_error_ratio: float, max_latency_ms: float,
                    latency_ms: float | None = None) -> GateDecision:
    """Gate on what Prometheus answered to `queries`; no data (or no request) is a no-go.

    `latency_ms` is the mean latency when it was measured elsewhere (the blue-green smoke load:
    the service exports no latency); else it is the `latency_seconds` query.
    """
    requests = values.get("requests")
    failed = values.get("failed")
    ratio = values.get("error_ratio")
    latency = values.get("latency_seconds") if latency_ms is None else latency_ms / 1000
    count = round(requests) if requests is not None and math.isfinite(requests) else 0
    if requests is None or ratio is None or latency is None or failed is None:
        missing = ", ".join(k for k in ("requests", "failed", "error_ratio", "latency_seconds")
                            if values.get(k) is None and (k != "latency_seconds" or latency_ms is None))
        go, reason = False, f"Prometheus has no data for the new colour ({missing})"
    elif count < 1 or not math.isfinite(ratio):
        go, reason = False, f"no traffic reached the new colour ({count} requests)"
    elif ratio > max_error_ratio:
        go, reason = False, f"error ratio {ratio:.3f} above {max_error_ratio}"
    elif 1000 * latency > max_latency_ms:
        go, reason = False, f"mean latency {1000 * latency:.0f} ms above {max_latency_ms:.0f} ms"
    else:
        go, reason = True, "within limits"
    return GateDecision(step=step, go=go, requests=count,
                        failed=round(failed) if failed is not None and math.isfinite(failed) else 0,
                        error_ratio=ratio if ratio is not None and math.isfinite(ratio) else 0.0,
                        latency_ms=1000 * latency if latency is not None and math.isfinite(latency) else 0.0,
                        reason=reason, source="prometheus", queries=dict(queries), values=dict(values))


def load_gate(step: int, report: LoadReport, *, max_error_ratio: float, max_latency_ms: float) -> GateDecision:
    """Gate on a load report (the blue-green smoke load against the idle hosts)."""
    requests, failed = report.total, report.failed
    ratio = failed / requests if requests else 1.0
    answered = [s.latency for s in report.samples if s.status]
    latency = 1000 * sum(answered) / len(answered) if answered else 0.0
    if not requests:
        go, reason = False, "no request was sent"
    elif ratio > max_error_ratio:
        go, reason = False, f"error ratio {ratio:.3f} above {max_error_ratio}"
    elif latency > max_latency_ms:
        go, reason = False, f"mean latency {latency:.0f} ms above {max_latency_ms:.0f} ms"
    else:
        go, reason = True, "within limits"
    return GateDecision(step=step, go=go, requests=requests, failed=failed, error_ratio=ratio,
                        latency_ms=latency, reason=reason, source="smoke load")


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
    control = f"/tmp/orch-cp-{os.getuid()}"
    argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ControlMaster=auto",
             "-o", f"ControlPath={control}/tr-%C", "-o", "ControlPersist=60s",
             f"{user}@{address}", shlex.join(remote)]
    return argv


# --- state ------------------------------------------------------------------------------------


def state_path(loaded: LoadedEnvironment) -> Path:
    return loaded.paths.traffic


def read_state(loaded: LoadedEnvironment) -> TrafficState:
    path = state_path(loaded)
    if not path.exists():
        return TrafficState()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrafficError(f"{path}: unreadable traffic state: {exc}") from None
    return TrafficState(weights={str(k): int(v) for k, v in (data.get("weights") or {}).items()},
                        active=data.get("active"), previous=data.get("previous"),
                        releases=dict(data.get("releases") or {}))


def write_state(loaded: LoadedEnvironment, state: TrafficState) -> None:
    path = state_path(loaded)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.as_dict(), indent=2) + "\n")
    tmp.replace(path)


def backend_weights(loaded: LoadedEnvironment, hosts: list[Host]) -> dict[str, int]:
    """Weights the LB config is rendered with: the recorded split, else every app host at 100."""
    recorded = read_state(loaded).weights
    return {h.name: recorded.get(h.name, FULL) for h in hosts}


# --- the load balancer --------------------------------------------------------------------------


def _network_check(loaded: LoadedEnvironment) -> Callable[[str], str]:
    terraform = loaded.env.terraform
    if isinstance(terraform, TerraformLocal):
        return FleetNetwork(terraform.vars.bridge, terraform.vars.subnet).assert_own_address
    return lambda address: address


def network(loaded: LoadedEnvironment) -> FleetNetwork | None:
    """The project's own bridge of a local environment (for the load generator's target check)."""
    terraform = loaded.env.terraform
    if isinstance(terraform, TerraformLocal):
        return FleetNetwork(terraform.vars.bridge, terraform.vars.subnet)
    return None


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
    result = run_playbook(PlaybookRun(
        playbook=loaded.project_dir / "playbooks" / "lb.yml", inventory=loaded.paths.inventory,
        project_dir=loaded.project_dir, runs_dir=loaded.paths.runs,
        extra_vars=lb_vars(loaded, weights), tuned=tuned, run_id=new_run_id() + "-lb",
        allowed_networks=allowed_networks(loaded),
    ), on_event=on_event)
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
        self.address = _network_check(loaded)(self.host.address)
        self.inventory = load_inventory(loaded.paths.inventory)

    def _call(self, remote: list[str]) -> dict[str, Any]:
        Path(f"/tmp/orch-cp-{os.getuid()}").mkdir(mode=0o700, exist_ok=True)
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


#: no proxy from the environment: the monitoring host is on the project's own bridge
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Prometheus:
    """Prometheus' HTTP API on the environment's monitoring host (instant queries)."""

    def __init__(self, loaded: LoadedEnvironment, host: Host) -> None:
        self.host = host
        self.url = f"http://{_network_check(loaded)(host.address)}:{PROMETHEUS_PORT}/api/v1/query"
        self.scrape = parse_duration(loaded.env.monitoring.scrape_interval)

    def query(self, promql: str) -> float | None:
        """The one value `promql` answers now; None when the answer is empty or NaN."""
        url = f"{self.url}?{urllib.parse.urlencode({'query': promql})}"
        try:
            with _OPENER.open(url, timeout=10) as response:
                data = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise TrafficError(f"{self.host.name}: Prometheus query failed ({exc}): {promql}") from None
        if data.get("status") != "success":
            raise TrafficError(f"{self.host.name}: Prometheus refused {promql}: {data.get('error')}")
        result = (data.get("data") or {}).get("result") or []
        if not result:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None

    def window(self, started: float) -> str:
        """Range selector reaching from the last scrape before `started` (epoch seconds) to now.

        Without that sample, requests answered between `started` and the first scrape after it are
        not counted (all of them when a freshly restarted service was measured before its first
        scrape); a counter reset in between is counted from zero by increase().
        """
        return f"{math.ceil(time.time() - started + self.scrape) + 1}s"

    def wait_scraped(self, selector: str, since: float) -> bool:
        """Wait until Prometheus has scraped every target of `selector` (of `up`) at or after `since`
        (epoch seconds); False when that did not happen within three scrape intervals and 5 s."""
        deadline = time.monotonic() + 3 * self.scrape + 5
        while True:
            last = self.query(f"min(timestamp(up{{{selector}}}))")
            if last is not None and last >= since:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(min(0.25, self.scrape / 4))


def monitoring_host(loaded: LoadedEnvironment) -> Host | None:
    """The monitoring host the gates query (first of group monitoring), when monitoring is enabled."""
    if not loaded.env.monitoring.enabled:
        return None
    path = loaded.paths.inventory
    if not path.exists():
        return None
    found = [h for h in hosts_from_inventory(load_inventory(path)) if "monitoring" in h.groups]
    return found[0] if found else None


def _prometheus_decision(prometheus: Prometheus, backend: str, step: int, servers: list[str],
                         started: float, *, max_error_ratio: float, max_latency_ms: float) -> GateDecision:
    """Wait for a scrape after the hold, then query the step's window (`started`: epoch seconds)."""
    ended = time.time()
    queries = prometheus_queries(backend, servers, prometheus.window(started))
    values, failure = _query_all(prometheus, f'job="{HAPROXY_JOB}"', ended, queries)
    decision = prometheus_gate(step, queries, values, max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms)
    return replace(decision, reason=failure) if failure else decision


def _query_all(prometheus: Prometheus, scraped: str, since: float,
               queries: Mapping[str, str]) -> tuple[dict[str, float | None], str | None]:
    """Every query's value once `scraped` (an `up` selector) was scraped after `since` ({} if it
    was not), and why Prometheus could not be asked. A failed query is a no-go like no data, not
    an exception that would leave the traffic split mid-canary."""
    try:
        if not prometheus.wait_scraped(scraped, since):
            return {}, None
        return {name: prometheus.query(q) for name, q in queries.items()}, None
    except TrafficError as exc:
        return {}, f"Prometheus could not be asked: {exc}"


def _service_decision(prometheus: Prometheus, hosts: list[str], smoke: GateDecision, *,
                      max_error_ratio: float, max_latency_ms: float) -> GateDecision:
    """Blue-green: Prometheus' error ratio of the new release on the idle hosts, scraped after the
    smoke load, and the smoke load's latency; a failed smoke load is a no-go whatever Prometheus
    saw (refused connections never reach the service's counters)."""
    ended = time.time()
    queries = service_queries(hosts)
    values, failure = _query_all(prometheus, f'job="{SERVICE_JOB}",host=~"{promql_servers(hosts)}"', ended,
                                 queries)
    decision = prometheus_gate(smoke.step, queries, values, max_error_ratio=max_error_ratio,
                               max_latency_ms=max_latency_ms, latency_ms=smoke.latency_ms)
    if failure:
        decision = replace(decision, reason=failure)
    if decision.go and not smoke.go:
        decision = replace(decision, go=False, reason=f"smoke load: {smoke.reason}")
    return replace(decision, values={**decision.values, "smoke_requests": float(smoke.requests),
                                     "smoke_failed": float(smoke.failed), "smoke_latency_ms": smoke.latency_ms})


# --- releases ---------------------------------------------------------------------------------------


TrafficStrategy = Literal["blue-green", "canary-traffic"]
#: what runs for a rollout.strategy / `--strategy` (resolve_strategy): `canary` is resolved away
RanStrategy = Literal["rolling", "canary-hosts", "canary-traffic", "blue-green"]


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
    with AuditLog(loaded.state_dir, env=loaded.name) as audit:
        audit.record(command=f"{strategy} gate", outcome="go" if decision.go else "rollback",
                     run_id=run_id, release=release, details=decision.as_dict())


def _active_color(state: TrafficState) -> Color:
    return state.active or "blue"


def _prepare_idle(loaded: LoadedEnvironment, lb: LoadBalancer, request: TrafficRequest,
                  on_event: EventSink | None) -> tuple[Color, Color, dict[Color, list[str]], ReleaseRun]:
    """Drain the idle colour, deploy the release to it (host-level gate), wait until the LB sees it up."""
    hosts = app_hosts(loaded)
    groups = {c: [h.name for h in hs] for c, hs in colors(hosts).items()}
    if not groups["blue"] or not groups["green"]:
        raise UsageError(f"{request.strategy} needs at least 2 app hosts; {loaded.name} has {len(hosts)}")
    state = read_state(loaded)
    active = _active_color(state)
    idle = other(active)
    drained = {n: FULL for n in groups[active]} | {n: 0 for n in groups[idle]}
    if any(int(lb.stats().get(n, {}).get("weight", -1)) != w for n, w in drained.items()):
        lb.set_weights(drained)
        # requests already on their way to the idle hosts finish before those restart
        time.sleep(0.5)
    state = read_state(loaded)
    state.active = active
    write_state(loaded, state)
    run = deploy(loaded, DeployRequest(
        release_path=request.deploy.release_path, strategy="rolling", tuned=request.deploy.tuned,
        secret_vars=request.deploy.secret_vars, build_env=request.deploy.build_env,
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
    result.restore = run_playbook(PlaybookRun(
        playbook=loaded.project_dir / "playbooks" / "rollback.yml", inventory=loaded.paths.inventory,
        project_dir=loaded.project_dir, runs_dir=loaded.paths.runs,
        extra_vars={**role_vars(loaded, None), "rollback_targets": restore,
                    "rollback_previous": previous_to_restore(run.hosts, restore),
                    "rollback_hosts": ",".join(sorted(restore))},
        run_id=f"{run.run_id}-restore", mitogen=True, allowed_networks=allowed_networks(loaded),
    ), on_event=transitions.events("restore", on_event) if transitions is not None else on_event)
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
                                     network=network(loaded)).run())
    merged = LoadReport(url="idle colour", samples=[s for r in reports for s in r.samples])
    max_error_ratio, max_latency_ms = rollout.max_error_ratio, 1000 * parse_duration(rollout.max_latency)
    decision = load_gate(0, merged, max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms)
    if prometheus is not None:
        decision = _service_decision(prometheus, groups[idle], decision,
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
    generator = LoadGenerator(spec, network=network(loaded)).start()
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
            decision = _prometheus_decision(prometheus, lb.backend, step, groups[idle], began,
                                            max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms)
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


def switch_back_pending(loaded: LoadedEnvironment) -> bool:
    """Whether the last traffic release left a colour to switch back to."""
    return read_state(loaded).previous is not None


def switch_back(loaded: LoadedEnvironment) -> TrafficRelease:
    """Give all traffic back to the colour that served before the last switch (one weight change)."""
    state = read_state(loaded)
    if state.previous is None:
        raise UsageError(f"{loaded.name}: no traffic release to switch back from")
    groups = {c: [h.name for h in hs] for c, hs in colors(app_hosts(loaded)).items()}
    lb = LoadBalancer(loaded)
    target = state.previous
    weights, seconds = _switch(loaded, lb, target, groups)
    state = read_state(loaded)
    state.previous = None  # a second rollback is not a switch forward again
    write_state(loaded, state)
    return TrafficRelease(env=loaded.name, strategy="switch-back", state="switched_back", active=target,
                          previous=None, weights=weights, switch_seconds=seconds,
                          release=state.releases.get(target))


def traffic_release(loaded: LoadedEnvironment, request: TrafficRequest, *, on_event: EventSink | None = None,
                    on_decision: DecisionSink | None = None, run_id: str | None = None) -> TrafficRelease:
    """Run `request` with its strategy."""
    if request.strategy == "blue-green":
        return blue_green(loaded, request, on_event=on_event, on_decision=on_decision, run_id=run_id)
    return canary_traffic(loaded, request, on_event=on_event, on_decision=on_decision, run_id=run_id)


# --- which strategy runs, and traffic releases in `orchestrate up` -------------------------------


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
    """orchestrator.deploy's strategy for a host-level one."""
    return "canary" if strategy == "canary-hosts" else "rolling"


def has_lb_host(loaded: LoadedEnvironment) -> bool:
    """Whether the environment's inventory has a host in group lb (False before provisioning)."""
    path = loaded.paths.inventory
    return path.exists() and any("lb" in h.groups for h in hosts_from_inventory(load_inventory(path)))


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
    colour left to switch back to (`orchestrate rollback` is then the host-level rollback)."""
    if not state_path(loaded).exists():
        return
    state = read_state(loaded)
    state.previous = None
    if release:
        state.releases = dict.fromkeys(COLORS, release)
    write_state(loaded, state)


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
    state = read_state(loaded)
    names = [h.name for h in app_hosts(loaded)]
    fleet = {h.name: h for h in status(loaded, tuned=request.deploy.tuned).hosts}
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
