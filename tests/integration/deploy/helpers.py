"""Helpers of the deploy suites: the hosts asked over HTTP (the CLI is FleetEnv.orchestrate)."""

from __future__ import annotations

import json

from tests.support.fleet import FleetEnv


def versions(fleet: FleetEnv) -> dict[str, str]:
    """`version` from /version of every app host."""
    found = {}
    for host in fleet.group("app"):
        status, body = fleet.http_get(host.address, "/version")
        assert status == 200, f"{host.name}: /version answered {status}"
        found[host.name] = json.loads(body)["version"]
    return found
