"""The traffic gates: go or roll back for a step of a traffic release, from HAProxy's counters,
from Prometheus on the monitoring host, or from a bounded smoke load, against the rollout's limits.

Through Prometheus, the error ratio is the service's own (the counter and failure matchers of
service.metrics) when the environment names them, else HAProxy's per-server responses; the
latency of a canary step is always HAProxy's. The metric names come from
orchestrator.monitoring.rules, like the alert rules'.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.types import parse_duration
from orchestrator.fleet.guard import address_check
from orchestrator.fleet.inventory import Host, hosts_from_inventory, load_inventory
from orchestrator.monitoring.rules import (
    HAPROXY_CONNECTION_ERRORS,
    HAPROXY_ERROR_CODE,
    HAPROXY_JOB,
    HAPROXY_RESPONSE_ERRORS,
    HAPROXY_RESPONSE_TIME,
    HAPROXY_RESPONSES,
    SERVICE_JOB,
    ErrorCounters,
)
from orchestrator.tools.prometheus import PrometheusAPI, PrometheusError
from orchestrator.traffic.loadgen import LoadReport


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


def prometheus_queries(backend: str, servers: list[str], window: str,
                       service: ErrorCounters | None = None) -> dict[str, str]:
    """The gate's PromQL over the last `window` for `servers` of HAProxy backend `backend` (pure).

    Without `service`, failures are HAProxy's 5xx answers plus connection and response errors, as
    in the `show stat` gate. With `service` (the service's own counters, service.metrics), the
    requests and failures are those the new colour's hosts counted over the window. The latency
    is HAProxy's mean response time of the servers (last 1024 requests), averaged over the window
    and the servers.
    """
    sel = f'job="{HAPROXY_JOB}",proxy="{backend}",server=~"{promql_servers(servers)}"'
    latency = f"avg(avg_over_time({HAPROXY_RESPONSE_TIME}{{{sel}}}[{window}]))"
    if service is not None:
        hosts = f'host=~"{promql_servers(servers)}"'
        requests = f"sum(increase({service.requests(hosts)}[{window}]))"
        # a release without any failure may have no such series at all
        failed = f"(sum(increase({service.failed(hosts)}[{window}])) or vector(0))"
        return {"requests": requests, "failed": failed, "error_ratio": f"{failed} / {requests}",
                "latency_seconds": latency}
    errors = " + ".join(f"sum(increase({metric}{{{sel}}}[{window}]))" for metric in
                        (HAPROXY_CONNECTION_ERRORS, HAPROXY_RESPONSE_ERRORS))
    answered = f"sum(increase({HAPROXY_RESPONSES}{{{sel}}}[{window}]))"
    failed = f"sum(increase({HAPROXY_RESPONSES}{{{sel},{HAPROXY_ERROR_CODE}}}[{window}])) + {errors}"
    requests = f"{answered} + {errors}"
    return {
        "requests": requests,
        "failed": failed,
        "error_ratio": f"({failed}) / ({requests})",
        "latency_seconds": latency,
    }


def service_queries(service: ErrorCounters, hosts: list[str]) -> dict[str, str]:
    """PromQL of the service's own request counters on `hosts`, as last scraped (pure).

    Not increase() over the smoke load: the deploy has just restarted the service, and a series
    such as the first `/` answers appears with its value already up (increase() misses a series'
    first sample). The counters of the fresh process are the new release's requests: deploy and
    LB health checks, health probes, scrapes and the smoke load. A release without any failure
    may have no failure series at all, hence `or vector(0)`.
    """
    sel = f'host=~"{promql_servers(hosts)}"'
    requests = f"sum({service.requests(sel)})"
    failed = f"(sum({service.failed(sel)}) or vector(0))"
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


class Prometheus(PrometheusAPI):
    """Prometheus on the environment's monitoring host (orchestrator.tools.prometheus), at an
    address checked against the project's own network."""

    def __init__(self, loaded: LoadedEnvironment, host: Host) -> None:
        super().__init__(f"http://{address_check(loaded)(host.address)}:{PROMETHEUS_PORT}", name=host.name,
                         scrape_interval=parse_duration(loaded.env.monitoring.scrape_interval))
        self.host = host


def step_window(prometheus: PrometheusAPI, started: float) -> str:
    """Range selector reaching from the last scrape before `started` (epoch seconds) to now.

    Without that sample, requests answered between `started` and the first scrape after it are
    not counted (all of them when a freshly restarted service was measured before its first
    scrape); a counter reset in between is counted from zero by increase().
    """
    return f"{math.ceil(time.time() - started + prometheus.scrape) + 1}s"


def monitoring_host(loaded: LoadedEnvironment) -> Host | None:
    """The monitoring host the gates query (first of group monitoring), when monitoring is enabled."""
    if not loaded.env.monitoring.enabled:
        return None
    path = loaded.paths.inventory
    if not path.exists():
        return None
    found = [h for h in hosts_from_inventory(load_inventory(path)) if "monitoring" in h.groups]
    return found[0] if found else None


def _prometheus_decision(prometheus: PrometheusAPI, backend: str, step: int, servers: list[str],
                         started: float, *, max_error_ratio: float, max_latency_ms: float,
                         service: ErrorCounters | None = None) -> GateDecision:
    """Wait for a scrape after the hold, then query the step's window (`started`: epoch seconds);
    the error ratio from the service's own counters when `service` names them."""
    ended = time.time()
    queries = prometheus_queries(backend, servers, step_window(prometheus, started), service)
    scraped = f'job="{HAPROXY_JOB}"' if service is None else f'job=~"{HAPROXY_JOB}|{SERVICE_JOB}"'
    values, failure = _query_all(prometheus, scraped, ended, queries)
    decision = prometheus_gate(step, queries, values, max_error_ratio=max_error_ratio, max_latency_ms=max_latency_ms)
    return replace(decision, reason=failure) if failure else decision


def _query_all(prometheus: PrometheusAPI, scraped: str, since: float,
               queries: Mapping[str, str]) -> tuple[dict[str, float | None], str | None]:
    """Every query's value once `scraped` (an `up` selector) was scraped after `since` ({} if it
    was not), and why Prometheus could not be asked. A failed query is a no-go like no data, not
    an exception that would leave the traffic split mid-canary."""
    try:
        if not prometheus.wait_scraped(scraped, since):
            return {}, None
        return {name: prometheus.query(q) for name, q in queries.items()}, None
    except PrometheusError as exc:
        return {}, f"Prometheus could not be asked: {exc}"


def _service_decision(prometheus: PrometheusAPI, service: ErrorCounters, hosts: list[str], smoke: GateDecision, *,
                      max_error_ratio: float, max_latency_ms: float) -> GateDecision:
    """Blue-green: Prometheus' error ratio of the new release on the idle hosts, scraped after the
    smoke load, and the smoke load's latency; a failed smoke load is a no-go whatever Prometheus
    saw (refused connections never reach the service's counters)."""
    ended = time.time()
    queries = service_queries(service, hosts)
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
