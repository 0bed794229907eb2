"""Release gates and signed releases on real local hosts.

- `up` with a cargo project that has a clippy warning, then one with a failing test: refused by the
  gates with the finding printed, and nothing changed on any host (status before = after; the run
  never reached provision).
- A release binary modified on one host after it was deployed: `rollback --to` that release is
  refused on that host, which keeps serving; the fleet ends on the release it served; the evidence
  names the file whose digest differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.deploy.helpers import versions
from tests.integration.up.helpers import FAST, run_detail, up
from tests.support.cli import run_orchestrate

from .crates import crate_copy

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

FleetEnv = Any
Builds = Any


def fleet_status(fleet: FleetEnv) -> list[tuple[str, str | None, str | None, bool]]:
    proc = run_orchestrate(fleet.project_dir, "status", fleet.env_name, "--json")
    assert proc.returncode == 0, proc.stderr
    return [(h["name"], h["release"], h["previous_release"], h["healthy"]) for h in json.loads(proc.stdout)["hosts"]]


def test_up_refuses_a_clippy_warning_and_a_failing_test_and_no_host_changes(
        unbooted_project: Any, hello_builds: Builds, tmp_path: Path) -> None:
    fleet = unbooted_project(app_count=1, monitoring_count=0, overrides=FAST)
    first = up(fleet, hello_builds.v1.binary)
    assert first.returncode == 0, first.stderr
    before = fleet_status(fleet)
    assert [(r, healthy) for _, r, _, healthy in before] == [(hello_builds.v1.release_id, True)]

    cases = [(crate_copy(tmp_path / "clippy", clippy_warning=True), "cargo-clippy", "[clippy::ptr_arg]"),
             (crate_copy(tmp_path / "failing", failing_test=True), "cargo-test",
              "test gate_probe_tests::release_gate_probe failed")]
    for crate, gate, finding in cases:
        proc = up(fleet, crate)
        assert proc.returncode == 1, proc.stderr
        assert finding in proc.stderr, proc.stderr  # the finding is printed
        report = json.loads(proc.stdout)
        failed = [g for g in report["gates"] if g["status"] == "failed"]
        assert [g["name"] for g in failed] == [gate]
        assert any(finding in f for f in failed[0]["findings"])
        run = run_detail(fleet, report["run_id"])
        steps = {s["name"]: s["state"] for s in run["steps"]}
        assert (run["state"], steps["gates"], steps["provision"], steps["deploy"]) == \
            ("failed", "failed", "pending", "pending")
        assert fleet_status(fleet) == before


def test_a_release_modified_on_a_host_is_refused_at_the_next_switch_to_it(
        fleet_factory: Any, hello_builds: Builds) -> None:
    fleet = fleet_factory(app_count=2, overrides=FAST)
    app = [h.name for h in fleet.group("app")]
    v1, v2 = hello_builds.v1.release_id, hello_builds.v2.release_id
    # v1 from its cargo project (so its SBOM is recorded), v2 as a built binary
    code, _, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v1.project), "--skip-backup")
    assert code == 0, err
    code, _, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v2.binary), "--skip-backup")
    assert code == 0, err
    assert versions(fleet) == dict.fromkeys(app, "0.2.0")

    # the hosts got the environment's public key and each release its signed manifest
    public = (fleet.state_dir / "release_signing_key.pub").read_text().split()[1]
    tampered = fleet.host(app[0])
    signers = fleet.ssh(tampered, "cat /etc/orchestrate/hello.release-signers").stdout
    assert public in signers and "PRIVATE" not in signers
    manifest = json.loads(fleet.ssh(tampered, f"cat /opt/hello/releases/{v1}/MANIFEST").stdout)
    assert manifest["id"] == v1 and manifest["sbom_sha256"] is not None

    fleet.ssh(tampered, f"printf 'x' >> /opt/hello/releases/{v1}/hello")
    code, result, err = fleet.orchestrate("rollback", "--to", v1)
    assert code == 1, err
    assert f"release {v1} refused" in err and tampered.name in err

    # the fleet keeps serving, on the release it served
    assert versions(fleet) == dict.fromkeys(app, "0.2.0")
    assert {(release, healthy) for _, release, _, healthy in fleet_status(fleet)} == {(v2, True)}
    health = {h.name: fleet.http_get(h.address, "/healthz")[0] for h in fleet.group("app")}
    assert health == dict.fromkeys(app, 200)
    # the evidence names the file whose digest differs
    evidence = Path(result["evidence_dir"]) / tampered.name / "integrity.txt"
    text = evidence.read_text()
    assert text.startswith("hello: sha256 ") and "differs from the manifest's" in text
    assert not (Path(result["evidence_dir"]) / app[1] / "integrity.txt").exists()

    # what went into v1, from its SBOM
    shown = run_orchestrate(fleet.project_dir, "release", "show", fleet.env_name, v1)
    assert shown.returncode == 0, shown.stderr
    assert "hello-service (this release)" in shown.stdout and "0.1.0" in shown.stdout
