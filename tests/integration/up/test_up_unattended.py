"""`orchestrate up` without anyone watching: the cron line run as cron runs it, a crash after the
last step, and a resume that must notice a fleet changed behind its back.

One app host for the whole module (tests run in file order; the first one provisions it).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.pipeline.up import CRASH_BEFORE_ENV, END, STEPS
from tests.support.cli import run_orchestrate

from .helpers import (
    FAST,
    FleetEnv,
    assert_fleet_on,
    cron_json,
    fleet_versions,
    password_file,
    run_detail,
    run_state,
    runs,
    up,
)

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def fleet(module_unbooted_project: Any) -> FleetEnv:
    return module_unbooted_project(app_count=1, monitoring_count=0, overrides=FAST)


def parse_cron_file(text: str) -> tuple[dict[str, str], str, str, str]:
    """(environment lines, schedule, user, command) of a one-entry /etc/cron.d file."""
    environment: dict[str, str] = {}
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep and name.isidentifier() and " " not in name:
            environment[name] = value
        else:
            entries.append(line)
    (entry,) = entries
    fields = entry.split(None, 6)
    return environment, " ".join(fields[:5]), fields[5], fields[6]


def test_the_cron_line_deploys_unattended(fleet: FleetEnv, hello_builds: Any, tmp_path: Path) -> None:
    cron_dir = tmp_path / "cron.d"
    # the operator's shell has the password file set: it becomes the line's default
    scheduled = run_orchestrate(fleet.project_dir, "schedule", fleet.env_name, "--cron", "*/10 * * * *", "--release",
                                str(hello_builds.v1.binary), "--install", "--cron-dir", str(cron_dir), "--json")
    assert scheduled.returncode == 0, scheduled.stderr
    (cron_file,) = cron_dir.iterdir()
    text = cron_file.read_text()
    assert password_file(fleet).read_text().splitlines()[0] not in text
    environment, when, user, command = parse_cron_file(text)
    assert (when, user) == ("*/10 * * * *", "root")
    assert command.startswith(f"ORCHESTRATE_VAULT_PASSWORD_FILE={password_file(fleet)} ")

    # as cron runs it: /bin/sh -c COMMAND, the file's environment and little else, no terminal,
    # stdin from /dev/null, a session of its own
    cron_env = {"SHELL": "/bin/sh", "HOME": "/root", "LOGNAME": "root", **environment}
    assert "ORCHESTRATE_VAULT_PASSWORD_FILE" not in cron_env
    proc = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=cron_env, cwd="/", start_new_session=True, timeout=900, check=False)
    log = fleet.state_dir / "cron.log"
    assert proc.returncode == 0, log.read_text()[-3000:] if log.exists() else proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # everything went to the log
    result = cron_json(log.read_text())
    assert result["env"] == fleet.env_name and result["noop"] is False
    assert result["release"] == hello_builds.v1.release_id
    assert [s["state"] for s in result["steps"]] == ["completed"] * len(STEPS)
    assert run_state(fleet, result["run_id"]) == "completed"
    assert_fleet_on(fleet, "0.1.0")


def test_crash_after_the_last_step_then_resume(fleet: FleetEnv, hello_builds: Any) -> None:
    before = {r["id"] for r in runs(fleet)}
    killed = up(fleet, hello_builds.v2.binary, extra_env={CRASH_BEFORE_ENV: END})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_id,) = {r["id"] for r in runs(fleet)} - before
    run = run_detail(fleet, run_id)
    # every step done, the run itself not: it died between verify and its completion
    assert run["state"] == "interrupted" and run["finished"] is None
    assert [s["state"] for s in run["steps"]] == ["completed"] * len(STEPS)
    assert_fleet_on(fleet, "0.2.0")

    resumed = run_orchestrate(fleet.project_dir, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "after its last step" in resumed.stderr
    result = json.loads(resumed.stdout)
    assert (result["resumed_at"], result["release"]) == (END, hello_builds.v2.release_id)
    run = run_detail(fleet, run_id)
    assert run["state"] == "completed" and run["attempts"] == 2
    assert all(s["attempts"] == 1 for s in run["steps"])  # no step ran twice
    assert_fleet_on(fleet, "0.2.0")


def test_resume_at_verify_checks_the_fleet_is_on_the_runs_release(fleet: FleetEnv, hello_builds: Any) -> None:
    before = {r["id"] for r in runs(fleet)}
    killed = up(fleet, hello_builds.v1.binary, extra_env={CRASH_BEFORE_ENV: "verify"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_id,) = {r["id"] for r in runs(fleet)} - before
    assert_fleet_on(fleet, "0.1.0")

    # meanwhile someone switches the host back to 0.2.0 by hand: healthy, but not this run's release
    (host,) = [h for h in fleet_for(fleet.loaded)[1] if "app" in h.groups]
    base = "/opt/hello"
    fleet.ssh(host, f"ln -sfn {base}/releases/{hello_builds.v2.release_id} {base}/current.hand"
                    f" && mv -T {base}/current.hand {base}/current && systemctl restart hello")
    deadline = time.monotonic() + 30
    while set(fleet_versions(fleet).values()) != {(200, "0.2.0")}:
        assert time.monotonic() < deadline, fleet_versions(fleet)
        time.sleep(0.2)

    resumed = run_orchestrate(fleet.project_dir, "resume", run_id, "--json")
    assert resumed.returncode == 1, resumed.stderr
    assert f"expected {hello_builds.v1.release_id}" in resumed.stderr
    assert run_state(fleet, run_id) == "failed"
