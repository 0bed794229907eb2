"""An app host powered off: a deploy stops at once, nothing switched, and says what to run.

The local fleet's hosts are on a bridge of this machine: a host that does not answer SSH within 2 s
is down (Ansible's 15 s default made the same deploy take 16 s, and `status` 17 s).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

FleetEnv = Any
Builds = Any
pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

FAST_GATE = {"service": {"health": {"timeout": "3s", "interval": "100ms"}}}


def test_a_host_powered_off_fails_the_deploy_fast_naming_it_and_what_to_run(
    fleet_factory: Any, hello_builds: Builds
) -> None:
    fleet: FleetEnv = fleet_factory(app_count=2, overrides=FAST_GATE)
    up, down = fleet.group("app")
    code, _, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v1.binary))
    assert code == 0, err
    code, _, err = fleet.orchestrate("status")
    assert code == 0, err
    fleet.fleet.stop(down.name)  # powered off: its container is gone, its address answers nothing

    # how long it takes is a benchmark's business (the machine's load decides); that the 2 s
    # connect timeout of a local fleet applied is in the message
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v2.binary))
    assert code == 1, err
    assert f"unreachable: {down.name} did not answer SSH within 2 s" in err
    assert f"`orchestrate provision {fleet.env_name}` boots it again" in err
    assert f"`orchestrate up {fleet.env_name}`" in err
    assert result["exit_code"] == 1 and down.name in result["error"]
    status, body = fleet.http_get(up.address, "/version")  # nothing switched on the host that answers
    assert status == 200 and json.loads(body)["version"] == "0.1.0"
    assert fleet.ssh(up, "readlink /opt/hello/current").stdout.strip() == f"releases/{hello_builds.v1.release_id}"

    code, report, err = fleet.orchestrate("status")
    assert code == 1, err
    units = {h["name"]: (h["unit"], h["healthy"]) for h in report["hosts"]}
    assert units == {up.name: ("active", True), down.name: ("unreachable", False)}
    assert f"{down.name} did not answer SSH" in err and f"`orchestrate provision {fleet.env_name}`" in err
