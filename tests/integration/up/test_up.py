"""`orchestrate up` end to end on real local hosts: first run, no-op, crash + resume, the lock.

Every check asks the hosts themselves over HTTP, and the journal through `orchestrate runs`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.pipeline import CRASH_BEFORE_ENV, STEPS

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]

FleetEnv = Any
ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")
PORT = 8080
FAST = {"service": {"health": {"timeout": "5s", "interval": "100ms"}}}


def run_cli(fleet: FleetEnv, *args: str, extra_env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["ORCHESTRATE_VAULT_PASSWORD_FILE"] = str(fleet.project_dir / "inventories/dev/.vault-password-dev")
    env.update(extra_env or {})
    return subprocess.run([ORCHESTRATE, "--project-dir", str(fleet.project_dir), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def up(fleet: FleetEnv, release: Path, *extra: str, extra_env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    return run_cli(fleet, "up", fleet.env_name, "--release", str(release), "--json", *extra, extra_env=extra_env)


def runs(fleet: FleetEnv) -> list[dict[str, Any]]:
    proc = run_cli(fleet, "runs", fleet.env_name, "--json", "--limit", "100")
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout)["runs"])


def app_addresses(fleet: FleetEnv) -> list[str]:
    inventory = json.loads(run_cli(fleet, "hosts", fleet.env_name, "--json").stdout)
    return [h["address"] for h in inventory["hosts"] if "app" in h["groups"]]


def get(fleet: FleetEnv, address: str, path: str) -> tuple[int, str]:
    url = f"http://{fleet.network.assert_own_address(address)}:{PORT}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def fleet_versions(fleet: FleetEnv) -> dict[str, tuple[int, str]]:
    """address -> (/healthz status, version from /version)."""
    found = {}
    for address in app_addresses(fleet):
        health, _ = get(fleet, address, "/healthz")
        _, body = get(fleet, address, "/version")
        found[address] = (health, json.loads(body)["version"])
    return found


def assert_fleet_on(fleet: FleetEnv, version: str) -> None:
    found = fleet_versions(fleet)
    assert found and all(v == (200, version) for v in found.values()), found


def assert_fleet_healthy_on_one_release(fleet: FleetEnv, allowed: set[str]) -> str:
    found = fleet_versions(fleet)
    assert found and all(status == 200 for status, _ in found.values()), found
    versions = {v for _, v in found.values()}
    assert len(versions) == 1 and versions <= allowed, found
    return versions.pop()


@pytest.fixture(scope="module")
def up_fleet(module_unbooted_project: Any) -> FleetEnv:
    """One fleet for the whole module (tests run in file order; the first one provisions it).

    No monitoring host: the monitoring stage is covered by the monitoring suite.
    """
    return module_unbooted_project(app_count=2, monitoring_count=0, overrides=FAST)


def test_up_without_release_provisions_only(up_fleet: FleetEnv) -> None:
    proc = run_cli(up_fleet, "up", up_fleet.env_name, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    steps = {s["name"]: s for s in result["steps"]}
    assert steps["deploy"]["detail"]["skipped"].startswith("no --release")
    assert steps["verify"]["detail"]["note"] == "no release deployed yet"
    hosts = json.loads(run_cli(up_fleet, "hosts", up_fleet.env_name, "--json").stdout)["hosts"]
    assert len(hosts) == 2 and all(h["state"] == "running" for h in hosts)


def test_first_up_then_noop(up_fleet: FleetEnv, hello_builds: Any) -> None:
    first = up(up_fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["noop"] is False and result["release"] == hello_builds.v1.release_id
    assert [s["state"] for s in result["steps"]] == ["completed"] * len(STEPS)
    assert_fleet_on(up_fleet, "0.1.0")

    again = up(up_fleet, hello_builds.v1.binary)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["noop"] is True
    assert {s["state"] for s in second["steps"]} == {"skipped"}
    assert all(h["healthy"] and h["release"] == hello_builds.v1.release_id for h in second["status"]["hosts"])

    # a host whose process died is not a no-op: up brings it back
    victim = up_fleet.loaded
    from orchestrator.hosts.local import fleet_for

    local, specs = fleet_for(victim)
    local.stop(specs[0].name)
    revived = up(up_fleet, hello_builds.v1.binary)
    assert revived.returncode == 0, revived.stderr
    assert json.loads(revived.stdout)["noop"] is False
    assert_fleet_on(up_fleet, "0.1.0")
    assert [r["state"] for r in runs(up_fleet)][:3] == ["completed", "completed", "completed"]


def _run_state(fleet: FleetEnv, run_id: str) -> str:
    return next(r["state"] for r in runs(fleet) if r["id"] == run_id)


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
        assert _run_state(up_fleet, run_id) == "interrupted"
        # at the crash every host still serves a release that passed its gate
        assert_fleet_healthy_on_one_release(up_fleet, {"0.1.0", "0.2.0"})

        resumed = run_cli(up_fleet, "resume", run_id, "--json")
        assert resumed.returncode == 0, (step, resumed.stderr)
        assert json.loads(resumed.stdout)["resumed_at"] == step
        assert _run_state(up_fleet, run_id) == "completed"
        assert_fleet_on(up_fleet, version)
        checked += 1
    assert checked == len(STEPS)


def _journal_step_state(fleet: FleetEnv, step: str) -> str | None:
    db = fleet.state_dir / "journal.db"
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute(
            "SELECT s.state FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.name = ?"
            " ORDER BY r.started DESC LIMIT 1", (step,)).fetchone()
    return str(row[0]) if row else None


def test_crash_in_the_middle_of_the_deploy_then_resume(up_fleet: FleetEnv, hello_builds: Any) -> None:
    first = up(up_fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    env = dict(os.environ, ORCHESTRATE_VAULT_PASSWORD_FILE=str(up_fleet.project_dir
                                                               / "inventories/dev/.vault-password-dev"))
    before = {r["id"] for r in runs(up_fleet)}
    proc = subprocess.Popen(
        [ORCHESTRATE, "--project-dir", str(up_fleet.project_dir), "up", up_fleet.env_name,
         "--release", str(hello_builds.v2.binary), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while _journal_step_state(up_fleet, "deploy") != "running":
        assert proc.poll() is None, "up ended before its deploy step started"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)  # inside the Ansible run: facts, copies, switches under way
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (run_id,) = {r["id"] for r in runs(up_fleet)} - before
    assert _run_state(up_fleet, run_id) == "interrupted"

    resumed = run_cli(up_fleet, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_at"] == "deploy"
    assert _run_state(up_fleet, run_id) == "completed"
    assert_fleet_on(up_fleet, "0.2.0")


def test_concurrent_ups_run_one_at_a_time(up_fleet: FleetEnv, hello_builds: Any) -> None:
    first = up(up_fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    env = dict(os.environ, ORCHESTRATE_VAULT_PASSWORD_FILE=str(up_fleet.project_dir
                                                               / "inventories/dev/.vault-password-dev"))
    argv = [ORCHESTRATE, "--project-dir", str(up_fleet.project_dir), "up", up_fleet.env_name,
            "--release", str(hello_builds.v1.binary), "--json"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(5)]
    outcomes = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [err for _, err in outcomes]
    assert sum("waiting for lock held by" in err for _, err in outcomes) >= 1

    five = [r for r in runs(up_fleet) if r["command"] == "up"][:5]
    assert len(five) == 5 and all(r["state"] == "completed" for r in five)
    spans = sorted((datetime.fromisoformat(r["started"]), datetime.fromisoformat(r["finished"])) for r in five)
    for (_, finished), (started, _) in itertools.pairwise(spans):
        assert finished <= started, spans

    # --lock-wait 0 while a run holds the lock: exit 75 at once, naming the holder
    holder = subprocess.Popen([*argv, "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (up_fleet.state_dir / "lock.json").exists() or _journal_step_state(up_fleet, "build") is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        busy = [subprocess.run([*argv, "--lock-wait", "0"], capture_output=True, text=True, env=env,
                               timeout=120, check=False) for _ in range(4)]
        assert holder.poll() is None, "the holder finished too early for the test to mean anything"
    finally:
        holder.wait(timeout=600)
    assert [b.returncode for b in busy] == [75] * 4, [b.stderr for b in busy]
    assert all("lock" in b.stderr and "orchestrate up" in b.stderr for b in busy)
    assert holder.returncode == 0
