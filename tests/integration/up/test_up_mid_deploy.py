"""SIGKILL `orchestrate up` in the middle of a rolling Ansible deploy, then `orchestrate resume`.

Three app hosts, one per batch, so the deploy has a genuine middle: the kill lands once the first
host has switched to the new release and passed its gate (it serves the new version; an
after_switch hook holds each switch for a second), while the others still serve the old one.
Every process of the run dies at once (its ssh sessions too, not only the `orchestrate` process
group).
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from typing import Any

import pytest

from orchestrator.pipeline.up import STEPS
from tests.support.cli import run_orchestrate, spawn_orchestrate
from tests.support.fleet import deep_merge

from .helpers import (
    FAST,
    SLOW_SWITCH,
    assert_fleet_on,
    fleet_versions,
    journal_step_state,
    kill_run,
    run_detail,
    runs,
    serving,
    up,
)

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]


def test_crash_in_the_middle_of_a_rolling_deploy_then_resume(unbooted_project: Any, hello_builds: Any) -> None:
    fleet = unbooted_project(app_count=3, monitoring_count=0, overrides=deep_merge(copy.deepcopy(FAST), {
        **SLOW_SWITCH, "rollout": {"strategy": "rolling", "batch_size": 1}}))
    first = up(fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    assert_fleet_on(fleet, "0.1.0")

    before_runs = {r["id"] for r in runs(fleet)}
    proc = spawn_orchestrate(fleet.project_dir, "up", fleet.env_name, "--release", str(hello_builds.v2.binary),
                             "--json", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        switched: set[str] = set()
        while not switched:
            assert proc.poll() is None, "up ended before any host switched"
            assert time.monotonic() < deadline, "no host switched within 300 s"
            time.sleep(0.02)
            switched = serving(fleet, "0.2.0")
        assert journal_step_state(fleet, "deploy") == "running"
        killed = kill_run(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert len(killed) >= 2, killed  # orchestrate and the ssh session of the host it deploys to

    # right after the kill: every host answers 200 on a release that passed its gate, and the
    # rollout really was half way (the first batch on the new release, a later one on the old)
    found = fleet_versions(fleet)
    assert all(status == 200 for status, _ in found.values()), found
    versions = [version for _, version in found.values()]
    assert "0.2.0" in versions and "0.1.0" in versions, found
    (run_id,) = {r["id"] for r in runs(fleet)} - before_runs
    run = run_detail(fleet, run_id)
    assert run["state"] == "interrupted"
    assert {s["name"]: s["state"] for s in run["steps"]}["deploy"] == "running"

    resumed = run_orchestrate(fleet.project_dir, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["resumed_at"] == "deploy" and result["release"] == hello_builds.v2.release_id
    run = run_detail(fleet, run_id)
    assert run["state"] == "completed" and run["attempts"] == 2
    assert [s["state"] for s in run["steps"]] == ["completed"] * len(STEPS)
    assert_fleet_on(fleet, "0.2.0")
