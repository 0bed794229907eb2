"""`orchestrate check` and the checkov verify check with the real tools (cargo, clippy, rustfmt,
terraform, checkov, ansible-lint, promtool), and `orchestrate release show` on a real build.

No host is involved: the gates run on the controller before anything reaches one (tests/integration/
gates/test_gates_hosts.py shows that a refused `up` leaves the hosts as they were).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.release.artifact import prepare_release

from .crates import crate_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")


def orchestrate(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCHESTRATE, "--project-dir", str(project), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=dict(os.environ), timeout=timeout, check=False)


def gates_of(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in json.loads(proc.stdout)["gates"]}


def test_a_clippy_warning_is_refused_naming_the_lint(project_copy: Path, tmp_path: Path) -> None:
    crate = crate_copy(tmp_path / "clippy", clippy_warning=True)
    proc = orchestrate(project_copy, "check", "dev", "--release", str(crate), "--json")
    assert proc.returncode == 1, proc.stderr
    gates = gates_of(proc)
    assert gates["cargo-clippy"]["status"] == "failed"
    assert any("src/main.rs:" in f and "[clippy::ptr_arg]" in f for f in gates["cargo-clippy"]["findings"])
    assert gates["cargo-clippy"]["version"].startswith("clippy ")
    # the other gates judged too: the crate is formatted and its tests pass
    assert (gates["cargo-fmt"]["status"], gates["cargo-test"]["status"]) == ("ok", "ok")
    assert "cargo-clippy failed" in proc.stderr and "clippy::ptr_arg" in proc.stderr


def test_a_failing_test_is_refused_naming_the_test(project_copy: Path, tmp_path: Path) -> None:
    crate = crate_copy(tmp_path / "failing", failing_test=True)
    proc = orchestrate(project_copy, "check", "dev", "--release", str(crate))
    assert proc.returncode == 1, proc.stderr
    assert "cargo-test failed" in proc.stderr
    assert "test gate_probe_tests::release_gate_probe failed" in proc.stderr
    assert "the release gate must see this test fail" in proc.stderr
    # the run is in the journal, failed, with every gate's verdict
    runs = json.loads(orchestrate(project_copy, "runs", "dev", "--json").stdout)["runs"]
    detail = json.loads(orchestrate(project_copy, "runs", "dev", runs[0]["id"], "--json").stdout)
    run = detail.get("run", detail)
    assert (run["command"], run["state"]) == ("check", "failed")
    step = next(s for s in run["steps"] if s["name"] == "gates")
    recorded = {g["name"]: g["status"] for g in step["detail"]["gates"]}
    assert recorded["cargo-test"] == "failed" and recorded["cargo-clippy"] == "ok"


def test_ssh_open_to_the_world_fails_check_and_verify_naming_the_checkov_check(project_copy: Path) -> None:
    clean = orchestrate(project_copy, "verify", "prod", "--check", "checkov", "--json")
    assert clean.returncode == 0, clean.stdout  # the shipped prod passes with the documented skips
    env_file = project_copy / "inventories" / "prod" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["terraform"]["vars"]["admin_cidr"] = "0.0.0.0/0"
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))

    check = orchestrate(project_copy, "check", "prod", "--json")
    assert check.returncode == 1, check.stderr
    checkov = gates_of(check)["checkov"]
    assert checkov["status"] == "failed" and checkov["version"] == "checkov 3.3.30"
    ssh = [f for f in checkov["findings"] if f.startswith("CKV_AWS_24: ")]
    assert any("module.fleet.aws_security_group.app" in f and "terraform/modules/aws_fleet/main.tf:" in f
               for f in ssh), checkov["findings"]
    assert "CKV_AWS_24" in check.stderr

    verify = orchestrate(project_copy, "verify", "prod", "--check", "checkov", "--json")
    assert verify.returncode == 1
    result = json.loads(verify.stdout)["checks"][0]
    assert result["status"] == "failed" and "CKV_AWS_24" in result["detail"]


def test_skipping_a_gate_is_refused_without_reason_and_for_prod(project_copy: Path) -> None:
    no_reason = orchestrate(project_copy, "check", "dev", "--skip-gate", "checkov")
    assert no_reason.returncode == 2 and "--skip-gate needs --reason" in no_reason.stderr
    protected = orchestrate(project_copy, "check", "prod", "--skip-gate", "checkov", "--reason", "outage")
    assert protected.returncode == 2 and "'prod' is protected" in protected.stderr
    # neither left a run behind: refused before the journal was touched
    assert json.loads(orchestrate(project_copy, "runs", "dev", "--json").stdout)["runs"] == []


def test_release_show_lists_the_crates_of_the_sbom(project_copy: Path, tmp_path: Path) -> None:
    crate = crate_copy(tmp_path / "svc" / "hello", path_dependency=True)
    loaded = Project(project_copy).load("dev")
    release = prepare_release(loaded, crate, run_tests=False)

    proc = orchestrate(project_copy, "release", "show", "dev", release.id, "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert [(c["name"], c["version"], c["source"], c["root"]) for c in shown["crates"]] == [
        ("hello-service", "0.1.0", "path", True), ("gate-helper", "0.4.2", "path", False)]
    assert shown["release"]["files"] == {"hello": release.sha256}
    assert shown["release"]["signer_fingerprint"].startswith("SHA256:")
    sbom = json.loads((loaded.paths.release(release.id) / "sbom.cdx.json").read_text())
    assert sbom["metadata"]["component"]["name"] == "hello-service"

    human = orchestrate(project_copy, "release", "show", "dev", release.id)
    assert "hello-service (this release)" in human.stdout and "gate-helper" in human.stdout
    unknown = orchestrate(project_copy, "release", "show", "dev", "0.1.0-000000000000")
    assert unknown.returncode == 2 and f"recorded: {release.id}" in unknown.stderr


def test_clean_gates_are_remembered_until_what_they_read_changes(project_copy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A second `check` of an unchanged project gives checkov's and promtool's clean results without
    running them (a release change skips them); a module or an environment edit runs them again.
    (ansible-lint, remembered the same way, is skipped here: its full run takes longer than the
    rest; tests/unit/tools/test_clean_results.py covers the key.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing remembered from other runs
    again = "unchanged since the last clean run"

    def details() -> dict[str, tuple[str, str, str]]:
        proc = orchestrate(project_copy, "check", "dev", "--skip-gate", "ansible-lint", "--reason",
                           "remembered like the others; not the subject here", "--json")
        assert proc.returncode == 0, proc.stderr
        return {name: (g["status"], g["detail"], g["version"]) for name, g in gates_of(proc).items()}

    first = details()
    assert all(again not in first[name][1] for name in ("checkov", "promtool")), first
    second = details()
    for name in ("checkov", "promtool"):
        assert second[name][0] == "ok" and again in second[name][1], second[name]
        assert second[name][2] == first[name][2] and second[name][2]  # the version that judged, as before
    assert second["checkov"][1].startswith(first["checkov"][1])
    assert again not in second["terraform-validate"][1]  # terraform's own checks run every time

    module = project_copy / "terraform" / "modules" / "local_fleet" / "main.tf"
    module.write_text(module.read_text() + "\n# an edit checkov has not seen\n")
    env_file = project_copy / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["monitoring"]["error_ratio_threshold"] = 0.07  # new alert rules for promtool
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    third = details()
    assert again not in third["checkov"][1] and again not in third["promtool"][1], third
