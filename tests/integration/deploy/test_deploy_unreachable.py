"""An app host powered off: a deploy stops at once, nothing switched, and says what to run.

The local fleet's hosts are on a bridge of this machine: a host that does not answer SSH within 2 s
is down (Ansible's 15 s default made the same deploy take 16 s, and `status` 17 s).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .helpers import orchestrate

FleetEnv = Any
Builds = Any
pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

FAST_GATE = {"service": {"health": {"timeout": "3s", "interval": "100ms"}}}
#: well under Ansible's 15 s connect timeout, with room for the CLI and Ansible to start on a busy box
DEPLOY_SECONDS = 10
#: what a host that does not answer may add to `status` (it is asked in parallel with the others):
#: the 2 s connect timeout and some slack; Ansible's default cost 15 s
STATUS_EXTRA_SECONDS = 5


def test_a_host_powered_off_fails_the_deploy_fast_naming_it_and_what_to_run(
    fleet_factory: Any, hello_builds: Builds
) -> None:
    fleet: FleetEnv = fleet_factory(app_count=2, overrides=FAST_GATE)
    up, down = fleet.group("app")
    code, _, err = orchestrate(fleet, "deploy", "--release", str(hello_builds.v1.binary))
    assert code == 0, err
    started = time.monotonic()
    code, _, err = orchestrate(fleet, "status")
    all_up = time.monotonic() - started  # the machine's pace: CLI, Ansible and mitogen start-up
    assert code == 0, err
    fleet.fleet.stop(down.name)  # powered off: its container is gone, its address answers nothing

    started = time.monotonic()
    code, result, err = orchestrate(fleet, "deploy", "--release", str(hello_builds.v2.binary))
    elapsed = time.monotonic() - started
    assert code == 1, err
    assert elapsed < DEPLOY_SECONDS, f"{elapsed:.1f} s:\n{err}"
    assert f"unreachable: {down.name} did not answer SSH within 2 s" in err
    assert f"`orchestrate provision {fleet.env_name}` boots it again" in err
    assert f"`orchestrate up {fleet.env_name}`" in err
    assert result["exit_code"] == 1 and down.name in result["error"]
    status, body = fleet.http_get(up.address, "/version")  # nothing switched on the host that answers
    assert status == 200 and json.loads(body)["version"] == "0.1.0"
    assert fleet.ssh(up, "readlink /opt/hello/current").stdout.strip() == f"releases/{hello_builds.v1.release_id}"

    started = time.monotonic()
    code, report, err = orchestrate(fleet, "status")
    elapsed = time.monotonic() - started
    assert code == 1, err
    assert elapsed < all_up + STATUS_EXTRA_SECONDS, f"{elapsed:.1f} s with a host down, {all_up:.1f} s with all up"
    units = {h["name"]: (h["unit"], h["healthy"]) for h in report["hosts"]}
    assert units == {up.name: ("active", True), down.name: ("unreachable", False)}
    assert f"{down.name} did not answer SSH" in err and f"`orchestrate provision {fleet.env_name}`" in err
