"""Ctrl-C in the middle of `deploy`, `rollback` and `up` on real local hosts.

The interrupt is SIGINT to the command's process group, as a terminal sends it, once the first host
has switched: for a deploy, once a host serves the new release (the release change runs without a
playbook; an after_switch hook holds each switch for a second, so the rollout has a middle); for
the rollback through the playbook (ORCHESTRATE_DIRECT=0), once ansible-runner's job events show a
switch. The command puts the hosts that had switched back, exits 130 (not 1 with
"ansible-playbook exited with 254 (canceled)"), and its run is `interrupted` in `orchestrate runs
ENV --json`. Three app hosts, one per batch. One fleet for the module (tests run in file order; the
first one provisions it).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.up.helpers import (
    FAST,
    SLOW_SWITCH,
    FleetEnv,
    assert_fleet_on,
    job_events,
    run_detail,
    run_dirs,
    runs,
    serving,
    up,
)
from tests.support.cli import cli_env, orchestrate_argv, run_orchestrate
from tests.support.fleet import deep_merge

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]

INTERRUPTED = 130
ROLLING_ONE_BY_ONE = deep_merge(copy.deepcopy(FAST), {**SLOW_SWITCH, "rollout": {"strategy": "rolling",
                                                                                 "batch_size": 1}})


@pytest.fixture(scope="module")
def fleet(module_unbooted_project: Any) -> FleetEnv:
    return module_unbooted_project(app_count=3, monitoring_count=0, overrides=ROLLING_ONE_BY_ONE)


def switched_in(playbook: str) -> Callable[[list[dict[str, Any]]], bool]:
    """True once a host's rust_release task of `playbook` finished ok (it switched)."""

    def seen(events: list[dict[str, Any]]) -> bool:
        return any(
            e.get("event") == "runner_on_ok"
            and (e.get("event_data") or {}).get("task_action") == "rust_release"
            and str((e.get("event_data") or {}).get("playbook", "")).endswith(playbook)
            for e in events
        )

    return seen


def serves(version: str) -> Callable[[FleetEnv, set[str]], bool]:
    """True once a host serves `version` (it switched and passed its gate)."""
    return lambda fleet, before: bool(serving(fleet, version))


def switched_through_playbook(playbook: str) -> Callable[[FleetEnv, set[str]], bool]:
    """True once the job events of `playbook` show a finished rust_release task."""
    seen = switched_in(playbook)
    return lambda fleet, before: seen(job_events(fleet.state_dir, before))


def interrupt_when(fleet: FleetEnv, args: list[str], ready: Callable[[FleetEnv, set[str]], bool],
                   env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `orchestrate ARGS --json` in a process group of its own, SIGINT the group once `ready`
    holds (given the playbook run folders from before); return the finished process and its run id."""
    before_runs = {r["id"] for r in runs(fleet)}
    before_playbooks = run_dirs(fleet.state_dir)
    proc = subprocess.Popen(orchestrate_argv(fleet.project_dir, *args, "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(fleet.project_dir, env),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ready(fleet, before_playbooks):
            assert proc.poll() is None, f"{args[0]} ended before the moment to interrupt it: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the moment to interrupt never came within 300 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    (run_id,) = {r["id"] for r in runs(fleet)} - before_runs
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), run_id


def assert_interrupted(proc: subprocess.CompletedProcess[str], fleet: FleetEnv, run_id: str) -> None:
    assert proc.returncode == INTERRUPTED, proc.stderr
    assert "interrupted" in proc.stderr and "254" not in proc.stderr and "canceled" not in proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == INTERRUPTED
    run = run_detail(fleet, run_id)
    assert run["state"] == "interrupted" and run["exit_code"] == INTERRUPTED, run
    assert "SIGINT" in run["error"]


def test_ctrl_c_during_up_deploy(fleet: FleetEnv, hello_builds: Any) -> None:
    first = up(fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    assert_fleet_on(fleet, "0.1.0")

    proc, run_id = interrupt_when(fleet, ["up", fleet.env_name, "--release", str(hello_builds.v2.binary)],
                                  serves("0.2.0"))
    assert_interrupted(proc, fleet, run_id)
    steps = {s["name"]: s["state"] for s in run_detail(fleet, run_id)["steps"]}
    assert steps["deploy"] == "failed" and steps["verify"] == "pending"
    assert_fleet_on(fleet, "0.1.0")  # the host that had switched is back


def test_ctrl_c_during_deploy_restores_and_exits_130(fleet: FleetEnv, hello_builds: Any) -> None:
    proc, run_id = interrupt_when(fleet, ["deploy", fleet.env_name, "--release", str(hello_builds.v2.binary)],
                                  serves("0.2.0"))
    assert_interrupted(proc, fleet, run_id)
    result = json.loads(proc.stdout)
    assert result["restored_hosts"] and set(result["restored_hosts"].values()) == {hello_builds.v1.release_id}
    assert "the hosts that had switched are back" in proc.stderr
    assert_fleet_on(fleet, "0.1.0")

    # the interrupted run leaves nothing in the way: the same deploy goes through
    again = run_orchestrate(fleet.project_dir, "deploy", fleet.env_name, "--release", str(hello_builds.v2.binary),
                            "--json")
    assert again.returncode == 0, again.stderr
    assert_fleet_on(fleet, "0.2.0")


def test_ctrl_c_during_rollback_restores_and_exits_130(fleet: FleetEnv, hello_builds: Any) -> None:
    # all hosts switch back at once without a playbook, well within a second: the playbook's
    # rollback (the path of --stock-ansible runs) has a middle to interrupt
    proc, run_id = interrupt_when(fleet, ["rollback", fleet.env_name], switched_through_playbook("rollback.yml"),
                                  env={"ORCHESTRATE_DIRECT": "0"})
    assert_interrupted(proc, fleet, run_id)
    assert_fleet_on(fleet, "0.2.0")  # the hosts that had rolled back are on the release again

