"""The controller's plain HTTP requests: health probes of the fleet's hosts and webhook posts.

Never through a proxy from the environment (the hosts are on the project's own network; a webhook
URL is what the operator wrote). Every request has a timeout; an HTTP error status is an answer,
not an exception. Connection problems come back as `HttpAnswer(status=None, error=...)`, so the
callers decide what a failure means (unhealthy host, notification to retry).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import urllib.request

# urllib.request (with http.client, email and ssl) is imported on the first request: most commands
# never send one, and its import is a good part of a short command's start


@functools.cache
def opener() -> urllib.request.OpenerDirector:
    """The opener every request to the fleet goes through (also Prometheus' and Alertmanager's
    clients): no proxy from the environment."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: how much of a body is kept
BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class HttpAnswer:
    """What a request got: the status and body, or why there was no answer."""

    status: int | None
    body: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def is_http_url(url: str) -> bool:
    """Whether `url` is an http:// or https:// URL (nothing else is ever opened; pure)."""
    return url.lower().startswith(("http://", "https://"))


def _send(request: urllib.request.Request, timeout: float) -> HttpAnswer:
    import urllib.error

    if not is_http_url(request.full_url):
        return HttpAnswer(status=None, error="not an http:// or https:// URL")
    try:
        with opener().open(request, timeout=timeout) as response:
            return HttpAnswer(status=response.status, body=response.read(BODY_LIMIT).decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        body = exc.read(BODY_LIMIT).decode("utf-8", "replace") if exc.fp is not None else ""
        return HttpAnswer(status=exc.code, body=body, error=f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, timed out, bad URL
        reason = getattr(exc, "reason", exc)
        return HttpAnswer(status=None, error=str(reason) or type(exc).__name__)


def get(url: str, *, timeout: float = 2.0) -> HttpAnswer:
    """GET `url`."""
    import urllib.request

    return _send(urllib.request.Request(url, method="GET"), timeout)  # noqa: S310 - _send allows http(s) only


def post_json(url: str, body: Mapping[str, Any], *, timeout: float = 5.0,
              headers: Mapping[str, str] | None = None) -> HttpAnswer:
    """POST `body` as JSON to `url`."""
    import urllib.request

    data = json.dumps(dict(body), default=str).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={  # noqa: S310 - http(s) only
        "Content-Type": "application/json", "User-Agent": "orchestrate", **dict(headers or {})})
    return _send(request, timeout)
