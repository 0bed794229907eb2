"""HTTP GETs from tests, behind the project's network rule: traffic goes only to loopback or to
hosts the project created itself.

    status, body = http_get(f"http://{address}:8080/healthz", network=fleet.network)
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")

A URL whose host is not loopback needs the fleet's `network` and must name a host address on that
bridge or the bridge's own address (the controller: a heal server listens there); anything else
raises HostError before anything connects. Proxies from the environment are
never used.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from orchestrator.fleet.local.network import FleetNetwork

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def guard_url(url: str, network: FleetNetwork | None = None) -> str:
    """Return `url` when its host is loopback or (with `network`) a host address on that bridge or
    the bridge's own address."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        if network is None:
            raise AssertionError(f"refusing {url}: not loopback, and no fleet network to check {host!r} against")
        if host != network.gateway:
            network.assert_own_address(host)
    return url


def http_get(url: str, *, network: FleetNetwork | None = None, timeout: float = 5) -> tuple[int, str]:
    """GET `url` (address checked first, see `guard_url`): (status, body). An HTTP error status is
    returned, not raised; a connection that fails raises OSError (urllib's URLError is one)."""
    try:
        with OPENER.open(guard_url(url, network), timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_http(url: str, *, network: FleetNetwork | None = None, timeout: float = 30) -> None:
    """Wait until `url` answers 200; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if http_get(url, network=network, timeout=2)[0] == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s ({last})")


def free_port() -> int:
    """A TCP port free on loopback right now (for a server a test starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
