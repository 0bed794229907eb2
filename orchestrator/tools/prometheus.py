"""Client of Prometheus' HTTP API: instant queries, and waiting for a scrape.

Only what the traffic gates ask: one value per instant query (`/api/v1/query`) and "has every
target of this selector been scraped since T". The URL and the reading of the answer are pure
functions (`query_url`, `instant_value`); requests never go through a proxy from the
environment (Prometheus runs on a host of the project's own network).
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.tools.http import opener

#: Prometheus' instant-query endpoint
QUERY_PATH = "/api/v1/query"

#: seconds one query may take
QUERY_TIMEOUT = 10.0


class PrometheusError(OrchestratorError):
    """Prometheus could not be asked, or refused the query."""


def query_url(base_url: str, promql: str) -> str:
    """The URL of an instant query of `promql` against `base_url` (http://HOST:PORT; pure)."""
    return f"{base_url.rstrip('/')}{QUERY_PATH}?{urllib.parse.urlencode({'query': promql})}"


def instant_value(data: Mapping[str, Any], promql: str, *, host: str = "prometheus") -> float | None:
    """The one value of an instant query's JSON answer (pure); None when it is empty or NaN.

    The first sample counts when the answer is a vector of several. PrometheusError when the
    answer says the query failed.
    """
    if data.get("status") != "success":
        raise PrometheusError(f"{host}: Prometheus refused {promql}: {data.get('error')}")
    result = (data.get("data") or {}).get("result") or []
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise PrometheusError(f"{host}: Prometheus answered no sample value for {promql}: {result[0]!r}") from None
    return value if math.isfinite(value) else None


def scrape_wait_limit(scrape_interval: float) -> float:
    """Seconds to wait for a scrape: three scrape intervals and 5 s (pure)."""
    return 3 * scrape_interval + 5


class PrometheusAPI:
    """Prometheus' HTTP API at `base_url` (http://HOST:PORT); `name` names it in errors."""

    def __init__(self, base_url: str, *, name: str, scrape_interval: float,
                 timeout: float = QUERY_TIMEOUT) -> None:
        self.base_url = base_url
        self.name = name
        #: seconds between scrapes (the scrape_interval of its configuration)
        self.scrape = scrape_interval
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The one value `promql` answers now; None when the answer is empty or NaN."""
        try:
            with opener().open(query_url(self.base_url, promql), timeout=self.timeout) as response:
                data = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"{self.name}: Prometheus query failed ({exc}): {promql}") from None
        if not isinstance(data, dict):
            raise PrometheusError(f"{self.name}: Prometheus answered {type(data).__name__}, not an object: {promql}")
        return instant_value(data, promql, host=self.name)

    def wait_scraped(self, selector: str, since: float) -> bool:
        """Wait until every target of `selector` (of `up`) was scraped at or after `since` (epoch
        seconds); False when that did not happen within `scrape_wait_limit`."""
        deadline = time.monotonic() + scrape_wait_limit(self.scrape)
        while True:
            last = self.query(f"min(timestamp(up{{{selector}}}))")
            if last is not None and last >= since:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(min(0.25, self.scrape / 4))
