"""`orchestrate up` on an environment with a load-balancer host: the `lb` step, and a traffic release.

rollout.strategy is `canary`, which means canary by traffic weight here because the environment
has an LB host. The first `up` has nothing serving yet (a rolling deploy to every app host); the
second one is a canary through the LB under load; the third, with the same release, is a no-op,
and a forced fourth must not flip the colours. Module order matters: one fleet, provisioned
through terraform by the first test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.fleet.inventory import app_hosts
from orchestrator.pipeline.up import STEPS
from orchestrator.traffic.state import read_state
from tests.support.fleet import TRAFFIC_OVERRIDES
from tests.support.net import http_get

from .test_lb import _colour_names, describe, load, timed_orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]

UP_OVERRIDES: dict[str, Any] = {
    **TRAFFIC_OVERRIDES,
    "rollout": {**TRAFFIC_OVERRIDES["rollout"], "strategy": "canary", "traffic_steps": [50, 100], "step_hold": "2s"},
}


@pytest.fixture(scope="module")
def lb_project(module_unbooted_project: Any) -> Any:
    return module_unbooted_project(app_count=2, lb_count=1, monitoring_count=0, overrides=UP_OVERRIDES)


def _up(fleet: Any, release: Path, *extra: str, noop: bool = False) -> dict[str, Any]:
    code, result, err, seconds = timed_orchestrate(fleet, "up", "--release", str(release), "--yes", *extra)
    assert code == 0, err
    assert result["noop"] is noop, result
    print(f"up {release.parent.parent.parent.name}: {seconds:.1f} s")
    return {"run_id": result["run_id"], **{s["name"]: s for s in result["steps"]}}


def _moves(fleet: Any, run_id: str) -> dict[str, list[str]]:
    """host -> the states the journal recorded for it in run `run_id`, in order."""
    code, data, err = fleet.orchestrate("runs", run_id)
    assert code == 0, err
    found: dict[str, list[str]] = {}
    for move in data["hosts"]:
        found.setdefault(move["host"], [move["from"]]).append(move["to"])
    return found


def _versions(fleet: Any) -> dict[str, str]:
    found = {}
    for host in app_hosts(fleet.loaded):
        status, body = http_get(f"http://{host.address}:8080/version", network=fleet.network)
        assert status == 200, f"{host.name}: /version answered {status}"
        found[host.name] = str(json.loads(body)["version"])
    return found


def test_up_configures_the_lb_and_runs_canary_by_traffic_weight(lb_project: Any, hello_builds: Any) -> None:
    fleet = lb_project
    v1, v2 = hello_builds.v1, hello_builds.v2

    steps = _up(fleet, v1.binary)
    assert list(steps)[1:] == list(STEPS)
    deploy, lb, verify = steps["deploy"]["detail"], steps["lb"]["detail"], steps["verify"]["detail"]
    # nothing served yet: no traffic to move, every app host got the release
    assert deploy["requested_strategy"] == "canary" and deploy["strategy"] == "rolling", deploy
    assert deploy["note"].startswith("first release") and deploy["release"] == v1.release_id, deploy
    app = {h.name for h in app_hosts(fleet.loaded)}
    assert "skipped" not in lb and lb["weights"] == dict.fromkeys(app, 100), lb
    assert verify["traffic"] == {"release": v1.release_id, "serving": dict.fromkeys(sorted(app), v1.release_id),
                                 "idle": {}}, verify
    smoke = load(fleet, 2).run()
    assert smoke.total == 100 and smoke.failed == 0 and set(smoke.served_by) == app, describe(smoke)

    groups = _colour_names(fleet)
    with load(fleet, 120) as gen:
        steps = _up(fleet, v2.binary)
        done = gen.now()
        time.sleep(2)
        gen.stop()
    assert gen.report.failed == 0, describe(gen.report)
    deploy, verify = steps["deploy"]["detail"], steps["verify"]["detail"]
    assert deploy["requested_strategy"] == "canary" and deploy["strategy"] == "canary-traffic", deploy
    assert deploy["state"] == "promoted" and deploy["active"] == "green", deploy
    assert [d["step"] for d in deploy["decisions"]] == [50, 100], deploy
    assert all(d["go"] and d["requests"] > 0 and d["failed"] == 0 for d in deploy["decisions"]), deploy
    assert {s.served_by for s in gen.report.samples if s.started > done + 0.5} == groups["green"]
    # verify wanted the serving colour on the new release and let the idle one keep the old one
    assert verify["release"] == v2.release_id
    assert verify["traffic"]["serving"] == dict.fromkeys(sorted(groups["green"]), v2.release_id), verify
    assert verify["traffic"]["idle"] == dict.fromkeys(sorted(groups["blue"]), v1.release_id), verify
    assert _versions(fleet) == {**dict.fromkeys(groups["green"], "0.2.0"), **dict.fromkeys(groups["blue"], "0.1.0")}
    # the journal's state machine: the new colour went the whole way, the serving one was only backed up
    moves = _moves(fleet, steps["run_id"])
    for name in groups["green"]:
        assert moves[name] == ["idle", "backed_up", "staged", "switched", "verified"], moves
    for name in groups["blue"]:
        assert moves[name] == ["idle", "backed_up"], moves

    # the same release again: a no-op, although the idle colour keeps v1 (that is as verify left it)
    steps = _up(fleet, v2.binary, noop=True)
    assert {s["state"] for name, s in steps.items() if name != "run_id"} == {"skipped"}, steps
    # and every stage run again (--force): the release already serves, the colours do not flip
    steps = _up(fleet, v2.binary, "--force")
    assert steps["deploy"]["detail"]["state"] == "unchanged", steps["deploy"]
    assert read_state(fleet.loaded).active == "green" and steps["lb"]["detail"]["changed"] == 0
    assert _versions(fleet) == {**dict.fromkeys(groups["green"], "0.2.0"), **dict.fromkeys(groups["blue"], "0.1.0")}


def test_canary_without_real_traffic_fails_unless_the_environment_sends_its_own(lb_project: Any,
                                                                                 hello_builds: Any) -> None:
    """An environment without users (staging): with no requests the first step is a no-go; with
    rollout.canary_load the canary sends its own bounded load through the LB and is promoted."""
    fleet = lb_project
    v1 = hello_builds.v1
    code, result, err = fleet.orchestrate("deploy", "--release", str(v1.binary), "--strategy", "canary")
    assert code == 3, err
    assert result["strategy"] == "canary-traffic" and result["state"] == "rolled_back", result
    assert result["synthetic_load"] is None
    [decision] = result["decisions"]
    assert not decision["go"] and "no traffic" in decision["reason"], decision

    env_file = fleet.project_dir / "inventories" / fleet.env_name / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["rollout"]["canary_load"] = 20
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    code, result, err = fleet.orchestrate("deploy", "--release", str(v1.binary), "--strategy", "canary")
    assert code == 0, err
    assert result["state"] == "promoted" and result["release"] == v1.release_id, result
    assert [d["step"] for d in result["decisions"]] == [50, 100]
    assert all(d["go"] and d["requests"] > 0 and d["failed"] == 0 for d in result["decisions"]), result
    load = result["synthetic_load"]
    assert load["rate"] == 20 and load["requests"] >= sum(d["requests"] for d in result["decisions"]) > 0, load
    assert load["failed"] == 0, load
