"""Asking whether an alert fires now: Alertmanager's API v2, or Prometheus' `ALERTS` series.

The heal server asks after it waited for the environment lock (orchestrator.heal.present): a
webhook notification may be minutes old by then. Both sources answer the same question, "does
an alert with these labels fire now?"; which one is reachable depends on the monitoring host
(roles/alertmanager binds Alertmanager to the monitoring host's loopback, while Prometheus
listens on the bridge), so the heal server uses Prometheus there, and Alertmanager where its API
is reachable. A small client of its own (not orchestrator.tools.prometheus): it asks one thing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.errors import OrchestratorError
from orchestrator.tools.http import opener

#: seconds one question may take (the heal server asks while it holds the environment lock)
TIMEOUT = 3.0


class AlertQueryError(OrchestratorError):
    """Alertmanager or Prometheus could not say whether an alert fires."""


class FiringSource(Protocol):
    """Anything that can say whether an alert fires now."""

    def firing(self, alertname: str, labels: Mapping[str, str]) -> bool: ...


def _escape(value: str) -> str:
    """A label value inside double quotes (PromQL and Alertmanager matchers use the same escapes)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def alert_matchers(alertname: str, labels: Mapping[str, str]) -> list[str]:
    """`name="value"` equality matchers of `alertname` and `labels`, sorted (pure)."""
    every = {**labels, "alertname": alertname}
    return [f'{key}="{_escape(value)}"' for key, value in sorted(every.items())]


def alerts_promql(alertname: str, labels: Mapping[str, str]) -> str:
    """PromQL selecting the firing `ALERTS` series of `alertname` with `labels` (pure)."""
    return "ALERTS{" + ",".join([*alert_matchers(alertname, labels), 'alertstate="firing"']) + "}"


def _get_json(url: str, timeout: float) -> Any:
    try:
        with opener().open(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AlertQueryError(f"GET {url}: HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise AlertQueryError(f"GET {url}: {exc}") from None


@dataclass(frozen=True)
class Alertmanager:
    """Alertmanager's API v2 at `base_url` (e.g. http://10.0.0.5:9093)."""

    base_url: str
    timeout: float = TIMEOUT

    def url(self, alertname: str, labels: Mapping[str, str]) -> str:
        """GET /api/v2/alerts for active, not silenced, not inhibited alerts matching exactly (pure)."""
        query = [("active", "true"), ("silenced", "false"), ("inhibited", "false"), ("unprocessed", "false")]
        query += [("filter", matcher) for matcher in alert_matchers(alertname, labels)]
        return f"{self.base_url.rstrip('/')}/api/v2/alerts?{urllib.parse.urlencode(query)}"

    def firing(self, alertname: str, labels: Mapping[str, str]) -> bool:
        """Whether Alertmanager holds such an alert as active now; AlertQueryError when it cannot say."""
        data = _get_json(self.url(alertname, labels), self.timeout)
        if not isinstance(data, list):
            raise AlertQueryError(f"{self.base_url}: /api/v2/alerts answered {type(data).__name__}, not a list")
        return any(isinstance(a, dict) and (a.get("status") or {}).get("state") == "active" for a in data)


@dataclass(frozen=True)
class PrometheusAlerts:
    """Prometheus' `ALERTS` series at `base_url` (e.g. http://10.0.0.5:9090): what it evaluates now."""

    base_url: str
    timeout: float = TIMEOUT

    def url(self, alertname: str, labels: Mapping[str, str]) -> str:
        """GET /api/v1/query of the firing ALERTS series (pure)."""
        query = urllib.parse.urlencode({"query": alerts_promql(alertname, labels)})
        return f"{self.base_url.rstrip('/')}/api/v1/query?{query}"

    def firing(self, alertname: str, labels: Mapping[str, str]) -> bool:
        """Whether the alert's `ALERTS` series is firing; AlertQueryError when Prometheus cannot say."""
        data = _get_json(self.url(alertname, labels), self.timeout)
        if not isinstance(data, dict) or data.get("status") != "success":
            raise AlertQueryError(f"{self.base_url}: the query failed: {str(data)[:200]}")
        result = (data.get("data") or {}).get("result")
        if not isinstance(result, list):
            raise AlertQueryError(f"{self.base_url}: the query answered no result list")
        return bool(result)
