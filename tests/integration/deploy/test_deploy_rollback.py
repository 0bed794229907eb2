"""Deploy, redeploy, failed gate, rollback and fleet consistency on real local hosts.

Every check asks the hosts themselves: over HTTP from the controller (GET /version, /healthz on
each app host's address) or over SSH (release directories).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.builds import Builds
from tests.support.fleet import FleetEnv

from .helpers import versions

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

# a short gate keeps the broken release's failure quick; dev's 10 s is for real starts
FAST_GATE = {"service": {"health": {"timeout": "3s", "interval": "100ms"}}}


def releases_on(fleet: FleetEnv, host_name: str) -> list[str]:
    out = fleet.ssh(fleet.host(host_name), "ls -1 /opt/hello/releases").stdout
    return sorted(out.split())


def test_deploy_redeploy_failed_gate_and_rollback(fleet_factory: Any, hello_builds: Builds) -> None:
    fleet: FleetEnv = fleet_factory(app_count=2, overrides=FAST_GATE)
    app = [h.name for h in fleet.group("app")]

    # v1 from its cargo project: tested, built, deployed, healthy everywhere
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v1.project))
    assert code == 0, err
    assert result["state"] == "deployed"
    v1 = hello_builds.v1.release_id
    assert result["release"] == v1
    assert versions(fleet) == dict.fromkeys(app, "0.1.0")

    # a project whose tests fail is refused before any host is touched
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.untested))
    assert code == 1
    assert "release refused" in err and "cargo test" in err
    assert versions(fleet) == dict.fromkeys(app, "0.1.0")

    # v2: every host on v2, v1 kept for rollbacks
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v2.project))
    assert code == 0, err
    v2 = hello_builds.v2.release_id
    assert {h["release"] for h in result["hosts"]} == {v2}
    assert versions(fleet) == dict.fromkeys(app, "0.2.0")
    for name in app:
        assert releases_on(fleet, name) == sorted([v1, v2])

    # the same release again changes nothing
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v2.binary))
    assert code == 0, err
    assert result["state"] == "unchanged"
    assert result["changed"] == 0
    assert all(counts["changed"] == 0 for counts in result["run"]["hosts"].values())
    assert not any(h["switched"] or h["changed"] for h in result["hosts"])

    # broken: the gate fails, every host goes back to v2 by itself, evidence is kept
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.broken.binary))
    assert code == 3, err
    assert result["state"] == "rolled_back"
    assert versions(fleet) == dict.fromkeys(app, "0.2.0")
    for host in fleet.group("app"):
        assert fleet.http_get(host.address, "/healthz")[0] == 200
        evidence = Path(result["evidence_dir"]) / host.name
        health = (evidence / "health.txt").read_text()
        assert "-> 500" in health and "broken" in health
        assert "hello" in (evidence / "journal.txt").read_text()
        assert "hello.service" in (evidence / "status.txt").read_text()

    # status: one release everywhere, v1 recorded as previous
    code, status, err = fleet.orchestrate("status")
    assert code == 0, err
    assert status["release"] == v2
    assert {h["name"] for h in status["hosts"]} == set(app)
    assert all(h["healthy"] and h["unit"] == "active" and h["previous_release"] == v1 for h in status["hosts"])

    # rollback to a named release
    code, result, err = fleet.orchestrate("rollback", "--to", v1)
    assert code == 0, err
    assert versions(fleet) == dict.fromkeys(app, "0.1.0")
    code, status, err = fleet.orchestrate("status")
    assert status["release"] == v1
    assert all(h["previous_release"] == v2 for h in status["hosts"])

    # a rollback to a release that fails its gate (the broken one is still on the hosts): every
    # host switches back by itself, exit 3, and the evidence is kept as for a deploy
    code, result, err = fleet.orchestrate("rollback", "--to", hello_builds.broken.release_id)
    assert code == 3, err
    assert result["state"] == "rolled_back"
    assert all(h["rolled_back"] and h["healthy"] and h["release"] == v1 for h in result["hosts"])
    assert versions(fleet) == dict.fromkeys(app, "0.1.0")
    for host in fleet.group("app"):
        assert "-> 500" in (Path(result["evidence_dir"]) / host.name / "health.txt").read_text()
    code, status, err = fleet.orchestrate("status")
    assert status["release"] == v1 and all(h["previous_release"] == v2 for h in status["hosts"])


def test_a_failed_batch_puts_every_switched_host_back(fleet_factory: Any, hello_builds: Builds) -> None:
    fleet: FleetEnv = fleet_factory(app_count=2, overrides={**FAST_GATE, "rollout": {"batch_size": 1}})
    first, second = fleet.group("app")
    code, _, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v1.binary))
    assert code == 0, err

    # v2 cannot be installed on the second host (a file sits where its release directory goes):
    # the first batch switches the first host to v2, the second batch fails, and the first host
    # must go back to v1 so that the fleet is on one release
    v2 = hello_builds.v2.release_id
    fleet.ssh(second, f"touch /opt/hello/releases/{v2}")
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v2.binary))
    assert code == 1, err
    assert result["restored_hosts"] == {first.name: hello_builds.v1.release_id}
    assert versions(fleet) == {first.name: "0.1.0", second.name: "0.1.0"}
    fleet.ssh(second, f"rm -f /opt/hello/releases/{v2}")

    # canary: the canary host fails its gate, the rest of the fleet is never touched
    broken = hello_builds.broken.release_id
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.broken.binary),
                                          "--strategy", "canary")
    assert code == 3, err
    assert [h["name"] for h in result["hosts"]] == [first.name]
    assert versions(fleet) == {first.name: "0.1.0", second.name: "0.1.0"}
    assert broken not in releases_on(fleet, second.name)
