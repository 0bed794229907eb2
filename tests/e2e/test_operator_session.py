"""An operator's session on a fresh copy of dev, through the CLI only, checking the contracts
scripts and cron rely on (docs/contracts.md): exit codes, and the `--json` shapes of `hosts`, `status`,
`runs` and `audit`.

    up (first release) -> hosts, status -> deploy a broken build (exit 3, nothing lost)
    -> deploy v2 -> rollback -> runs, audit -> destroy (refused without --yes, then done)

Every claim about a host is checked against the host itself over HTTP as well.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import orchestrate, run_orchestrate

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

#: the contract keys (more may be added, none renamed)
HOST_KEYS = {"name", "address", "groups", "state"}
STATUS_HOST_KEYS = {"name", "address", "release", "previous_release", "unit", "healthy"}
RUN_KEYS = {"id", "command", "state", "started", "finished", "release"}
RUN_STATES = {"running", "completed", "failed", "interrupted"}


class Session:
    """`orchestrate --project-dir P VERB ...` without a terminal, as cron and scripts run it."""

    def __init__(self, project: Path) -> None:
        self.project = project

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run_orchestrate(self.project, *args, timeout=timeout)

    def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        returncode, data, stderr = orchestrate(self.project, *args, timeout=900)
        assert returncode == code, f"{' '.join(args)} exited {returncode}, expected {code}:\n{stderr}"
        return data


def test_operator_session(unbooted_project: Any, hello_builds: Any) -> None:
    fleet = unbooted_project(app_count=2, monitoring_count=0, overrides={
        "service": {"health": {"timeout": "4s", "interval": "100ms"}}})
    cli = Session(fleet.project_dir)
    subnet = ipaddress.ip_network(fleet.network.subnet)
    v1, v2 = hello_builds.v1, hello_builds.v2

    envs = cli.json("envs")
    assert {"dev", "staging", "prod"} <= {e["name"] for e in envs["envs"] if e["valid"]}
    assert cli.run("validate", "dev").returncode == 0

    # first up: provisions the fleet and deploys v1
    up = cli.json("up", "dev", "--yes", "--release", str(v1.binary))
    assert up["noop"] is False and up["release"] == v1.release_id

    hosts = cli.json("hosts", "dev")
    assert hosts["env"] == "dev"
    apps = [h for h in hosts["hosts"] if "app" in h["groups"]]
    assert len(apps) == 2
    for host in hosts["hosts"]:
        assert set(host) >= HOST_KEYS, host
        assert host["state"] == "running"
        assert ipaddress.ip_address(host["address"]) in subnet

    def status() -> dict[str, Any]:
        data = cli.json("status", "dev")
        assert data["env"] == "dev" and len(data["hosts"]) == 2
        for host in data["hosts"]:
            assert set(host) >= STATUS_HOST_KEYS, host
        return data

    def serving(release: str) -> None:
        for host in apps:
            code, body = fleet.http_get(host["address"], "/healthz")
            assert code == 200, f"{host['name']}: /healthz {code} {body!r}"
            code, body = fleet.http_get(host["address"], "/version")
            assert code == 200 and json.loads(body)["version"] == release.split("-")[0], body

    first = status()
    assert first["release"] == v1.release_id
    assert all(h["healthy"] and h["unit"] == "active" for h in first["hosts"])
    serving(v1.release_id)

    # a broken build: exit 3, every host back on v1 and serving, evidence kept
    broken = cli.json("deploy", "dev", "--release", str(hello_builds.broken.binary), code=3)
    assert broken["state"] == "rolled_back"
    assert broken["evidence_dir"] and any(Path(broken["evidence_dir"]).rglob("health.txt"))
    assert status()["release"] == v1.release_id
    serving(v1.release_id)

    # v2, then roll back to v1 by the CLI
    deployed = cli.json("deploy", "dev", "--release", str(v2.binary))
    assert deployed["state"] == "deployed" and deployed["release"] == v2.release_id
    after = status()
    assert after["release"] == v2.release_id
    assert {h["previous_release"] for h in after["hosts"]} == {v1.release_id}
    serving(v2.release_id)
    rolled = cli.json("rollback", "dev")
    assert rolled["state"] == "deployed"
    assert status()["release"] == v1.release_id
    serving(v1.release_id)

    # the journal: newest first, with the contract keys and states
    listed = cli.json("runs", "dev")["runs"]
    for run in listed:
        assert set(run) >= RUN_KEYS, run
        assert run["state"] in RUN_STATES
    commands = [(r["command"], r["state"]) for r in listed if r["command"] in {"up", "deploy", "rollback"}]
    assert commands[:4] == [("rollback", "completed"), ("deploy", "completed"), ("deploy", "failed"),
                            ("up", "completed")], commands
    assert [r["started"] for r in listed] == sorted((r["started"] for r in listed), reverse=True)

    # the audit log holds each of them, and its hash chain is intact
    audit = cli.json("audit", "dev", "--verify", "--limit", "100")
    assert audit["verified"] >= 4
    audited = {(e["command"], e["run_id"]) for e in audit["entries"]}
    for run in listed[:4]:
        assert (run["command"], run["id"]) in audited, run

    # destroy: refused without a terminal and without --yes (nothing touched), then done
    refused = cli.run("destroy", "dev")
    assert refused.returncode == 2, refused.stderr
    assert "--yes" in refused.stderr
    assert all(h["state"] == "running" for h in cli.json("hosts", "dev")["hosts"])
    serving(v1.release_id)
    assert cli.run("destroy", "dev", "--yes").returncode == 0
    gone = cli.json("hosts", "dev")
    assert all(h["state"] == "missing" for h in gone["hosts"]), gone
