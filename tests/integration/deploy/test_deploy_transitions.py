"""Real deploys write each app host's moves through the deployment state machine into the run
journal, as `orchestrate runs ENV RUN_ID` shows them: a good deploy, a failed batch put back by
the fleet restore, a broken release that fails its gate, and a rollback.

Two real local hosts, one per batch (so a failure has a host before and after it).
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.models.process import INITIAL_STATE, is_allowed
from tests.support.fleet import FleetEnv

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

FAST = {"service": {"health": {"timeout": "3s", "interval": "100ms"}}, "rollout": {"batch_size": 1}}
FORWARD = ["backed_up", "staged", "switched", "verified"]


def journal_moves(fleet: FleetEnv, command: str) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """The newest run of `command` from `orchestrate runs`: each host's states in order (after
    checking that every move is legal and starts where the previous one ended), and the rows."""
    code, listed, err = fleet.orchestrate("runs")
    assert code == 0, err
    run_id = next(r["id"] for r in listed["runs"] if r["command"] == command)
    code, shown, err = fleet.orchestrate("runs", run_id)
    assert code == 0, err
    states: dict[str, list[str]] = {}
    current: dict[str, str] = {}
    for move in shown["hosts"]:
        host = move["host"]
        assert move["from"] == current.get(host, INITIAL_STATE.value), move
        assert is_allowed(move["from"], move["to"]), move
        current[host] = move["to"]
        states.setdefault(host, []).append(move["to"])
    return states, shown["hosts"]


def test_deploys_and_a_rollback_record_every_host_transition(fleet_factory: Any, hello_builds: Any) -> None:
    fleet: FleetEnv = fleet_factory(app_count=2, overrides=FAST)
    first, second = (h.name for h in fleet.group("app"))
    v1, v2, broken = (b.release_id for b in (hello_builds.v1, hello_builds.v2, hello_builds.broken))

    # a good deploy: every host backed up, staged, switched and verified, in that order
    code, _, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v1.binary))
    assert code == 0, err
    states, rows = journal_moves(fleet, "deploy")
    assert states == {first: FORWARD, second: FORWARD}
    assert {r["release"] for r in rows} == {v1}
    assert all(r["detail"]["backup"] for r in rows if r["to"] == "backed_up")

    # the second batch cannot stage v2 (a file where its release directory goes): it fails, and
    # the fleet restore puts the first host, which had passed its gate, back on v1
    fleet.ssh(fleet.host(second), f"touch /opt/hello/releases/{v2}")
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v2.binary))
    assert code == 1, err
    assert result["restored_hosts"] == {first: v1}
    states, rows = journal_moves(fleet, "deploy")
    assert states == {first: [*FORWARD, "rolled_back"], second: ["backed_up", "failed"]}
    assert next(r for r in rows if r["host"] == first and r["to"] == "rolled_back")["detail"]["by"] == "fleet restore"
    assert "Copy the release binary" in next(r for r in rows if r["to"] == "failed")["detail"]["task"]
    fleet.ssh(fleet.host(second), f"rm -f /opt/hello/releases/{v2}")

    # a broken release fails its gate on the first batch and goes back by itself; the rollout
    # stops, so the second host is backed up and never staged
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.broken.binary))
    assert code == 3, err
    states, rows = journal_moves(fleet, "deploy")
    assert states == {first: ["backed_up", "staged", "failed", "rolled_back"], second: ["backed_up"]}
    assert {r["release"] for r in rows} == {broken}
    restored = next(r for r in rows if r["to"] == "rolled_back")
    assert restored["detail"] == {"by": "rust_release", "release_restored": v1}

    # `orchestrate rollback`: straight from idle to rolled_back on every host
    code, _, err = fleet.orchestrate("rollback", "--to", v1)
    assert code == 0, err
    states, _ = journal_moves(fleet, "rollback")
    assert states == {first: ["rolled_back"], second: ["rolled_back"]}
