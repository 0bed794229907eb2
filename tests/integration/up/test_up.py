"""`orchestrate up` end to end on real local hosts: first run, no-op, audit, crash at every step
boundary + resume.

Every check asks the hosts themselves over HTTP, and the journal through `orchestrate runs`.
The crash in the middle of a rolling deploy is in test_up_mid_deploy.py, the crash after the last
step and the cron line in test_up_unattended.py, concurrent runs in test_up_concurrent.py.
"""

from __future__ import annotations

import getpass
import json
import re
import signal
import socket
from typing import Any

import pytest

from orchestrator.pipeline.up import CRASH_BEFORE_ENV, STEPS
from tests.support.cli import run_orchestrate

from .helpers import (
    FAST,
    FleetEnv,
    assert_fleet_healthy_on_one_release,
    assert_fleet_on,
    audit_entries,
    run_state,
    runs,
    up,
)

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def up_fleet(module_unbooted_project: Any) -> FleetEnv:
    """One fleet for the whole module (tests run in file order; the first one provisions it).

    No monitoring host: the monitoring stage is covered by the monitoring suite.
    """
    return module_unbooted_project(app_count=2, monitoring_count=0, overrides=FAST)


def test_up_without_release_provisions_only(up_fleet: FleetEnv) -> None:
    proc = run_orchestrate(up_fleet.project_dir, "up", up_fleet.env_name, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    steps = {s["name"]: s for s in result["steps"]}
    assert steps["deploy"]["detail"]["skipped"].startswith("no --release")
    assert steps["verify"]["detail"]["note"] == "no release deployed yet"
    hosts = json.loads(run_orchestrate(up_fleet.project_dir, "hosts", up_fleet.env_name, "--json").stdout)["hosts"]
    assert len(hosts) == 2 and all(h["state"] == "running" for h in hosts)


def test_first_up_then_noop(up_fleet: FleetEnv, hello_builds: Any) -> None:
    first = up(up_fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["noop"] is False and result["release"] == hello_builds.v1.release_id
    assert [s["state"] for s in result["steps"]] == ["completed"] * len(STEPS)
    assert_fleet_on(up_fleet, "0.1.0")

    # the audit log holds the run: who, where, what, which release and plan, outcome, how long
    (record,) = [r for r in runs(up_fleet) if r["id"] == result["run_id"]]
    (entry,) = [e for e in audit_entries(up_fleet) if e["run_id"] == result["run_id"]]
    assert (entry["user"], entry["host"]) == (getpass.getuser(), socket.gethostname())
    assert (entry["command"], entry["env"], entry["outcome"]) == ("up", up_fleet.env_name, "completed")
    assert entry["details"]["argv"] == ["up", up_fleet.env_name, "--release", str(hello_builds.v1.binary.resolve())]
    assert entry["release"] == hello_builds.v1.release_id == record["release"]
    assert re.fullmatch(r"[0-9a-f]{64}", entry["plan_sha256"] or "") and entry["plan_sha256"] == record["plan_sha256"]
    assert entry["details"]["exit_code"] == 0
    assert 0 < entry["duration"] <= result["duration"] + 1

    again = up(up_fleet, hello_builds.v1.binary)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["noop"] is True
    assert {s["state"] for s in second["steps"]} == {"skipped"}
    assert all(h["healthy"] and h["release"] == hello_builds.v1.release_id for h in second["status"]["hosts"])
    # a no-op is in turn the reference of the next one: on an unchanged fleet every later up is a no-op
    third = up(up_fleet, hello_builds.v1.binary)
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["noop"] is True

    # a host whose process died is not a no-op: up brings it back
    victim = up_fleet.loaded
    from orchestrator.fleet.local.terraform import fleet_for

    local, specs = fleet_for(victim)
    local.stop(specs[0].name)
    revived = up(up_fleet, hello_builds.v1.binary)
    assert revived.returncode == 0, revived.stderr
    assert json.loads(revived.stdout)["noop"] is False
    assert_fleet_on(up_fleet, "0.1.0")
    assert [r["state"] for r in runs(up_fleet)][:3] == ["completed", "completed", "completed"]


def test_crash_at_every_step_boundary_then_resume(up_fleet: FleetEnv, hello_builds: Any) -> None:
    first = up(up_fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    builds = [(hello_builds.v2, "0.2.0"), (hello_builds.v1, "0.1.0")]
    checked = 0
    for index, step in enumerate(STEPS):
        build, version = builds[index % 2]
        before = {r["id"] for r in runs(up_fleet)}
        killed = up(up_fleet, build.binary, extra_env={CRASH_BEFORE_ENV: step})
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
        (run_id,) = {r["id"] for r in runs(up_fleet)} - before
        assert run_state(up_fleet, run_id) == "interrupted"
        # at the crash every host still serves a release that passed its gate
        assert_fleet_healthy_on_one_release(up_fleet, {"0.1.0", "0.2.0"})

        resumed = run_orchestrate(up_fleet.project_dir, "resume", run_id, "--json")
        assert resumed.returncode == 0, (step, resumed.stderr)
        assert json.loads(resumed.stdout)["resumed_at"] == step
        assert run_state(up_fleet, run_id) == "completed"
        assert_fleet_on(up_fleet, version)
        checked += 1
    assert checked == len(STEPS)
