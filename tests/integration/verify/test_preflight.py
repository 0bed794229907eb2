"""Pre-flight checks stop `up` and `provision` before anything touches a host.

`up` checks the environment file, the heal policy and the deploy model right after rendering;
`provision` checks the fresh plan's resource graph (no cycle, every reference resolves) between
the plan and the apply. Both exit 2 (bad input: the project's configuration) with nothing
changed. The steps that would touch hosts are replaced by tripwires, so that a pre-flight that
failed to stop the run fails the test instead of booting hosts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config.loader import Project
from orchestrator.errors import ExitStatus
from orchestrator.fleet import provision as provision_module
from orchestrator.fleet.provision import PreflightFailed, preflight_graph
from orchestrator.pipeline.up import UpRequest, up
from orchestrator.runs.journal import Journal
from orchestrator.tools.terraform import Terraform
from tests.support.project import PLANS

pytestmark = pytest.mark.integration


def _tripwire(what: str) -> Any:
    def touched(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{what} ran although the pre-flight should have stopped the run")

    return touched


def _cyclic_plan() -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((PLANS / "plan.json").read_text())
    network = next(r for r in plan["configuration"]["root_module"]["resources"]
                   if r["address"] == "terraform_data.network")
    network["depends_on"] = ["terraform_data.backup"]
    return plan


def test_the_plan_graph_preflight_passes_a_good_plan_and_names_what_is_broken() -> None:
    good = json.loads((PLANS / "plan.json").read_text())
    assert preflight_graph(good, Path("plan.tfplan")) == ["references", "acyclic"]
    with pytest.raises(PreflightFailed, match=r"plan.tfplan: .*dependency cycle: terraform_data\.") as caught:
        preflight_graph(_cyclic_plan(), Path("plan.tfplan"))
    assert caught.value.exit_status is ExitStatus.BAD_INPUT
    dangling = copy.deepcopy(good)
    dangling["configuration"]["root_module"]["resources"][0]["depends_on"] = ["terraform_data.gone"]
    with pytest.raises(PreflightFailed, match=r"reference 'terraform_data\.gone' points at no resource"):
        preflight_graph(dangling, Path("plan.tfplan"))


def test_a_broken_heal_policy_stops_up_before_provisioning(project_copy: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (project_copy / "playbooks" / "remediate-rollback.yml").unlink()
    monkeypatch.setattr(provision_module, "provision", _tripwire("provision"))
    loaded = Project(project_copy).load("dev")
    with pytest.raises(PreflightFailed) as caught:
        up(loaded, UpRequest(argv=["up", "dev"]))
    assert "pre-flight of dev failed, nothing was touched: heal-policy: alert HighErrorRate" in caught.value.message
    with Journal.open(loaded.state_dir) as journal:
        (run,) = journal.runs(with_steps=True)
    steps = {s.name: s for s in run.steps}
    assert run.state == "failed" and run.exit_code == int(ExitStatus.BAD_INPUT)
    assert steps["render"].state == "failed" and "heal-policy" in steps["render"].detail["error"]
    assert steps["provision"].state == "pending"

    # the CLI maps it to exit 2
    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "up", "dev", "--json"])
    assert result.exit_code == 2, result.output
    assert "heal-policy" in result.stderr


def test_a_good_preflight_is_recorded_in_the_render_step(project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Stop(Exception):
        pass

    def provision_reached(*args: Any, **kwargs: Any) -> Any:
        raise Stop

    monkeypatch.setattr(provision_module, "provision", provision_reached)
    loaded = Project(project_copy).load("dev")
    with pytest.raises(Stop):
        up(loaded, UpRequest(argv=["up", "dev"]))
    with Journal.open(loaded.state_dir) as journal:
        (run,) = journal.runs(with_steps=True)
    render = next(s for s in run.steps if s.name == "render")
    assert render.state == "completed"
    assert render.detail["preflight"] == {"environment": "ok", "heal-policy": "ok", "deploy-model": "ok"}


def test_a_plan_with_a_cycle_stops_provision_before_the_apply(project_copy: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A real terraform plan of the dev root; only its JSON is swapped for one with a cycle
    (terraform itself refuses real cycles at plan time: this is the second line of defence)."""
    shown: list[Path] = []

    def cyclic_show(self: Terraform, plan_file: Path) -> dict[str, Any]:
        shown.append(plan_file)
        return _cyclic_plan()

    monkeypatch.setattr(Terraform, "show_plan", cyclic_show)
    monkeypatch.setattr(Terraform, "apply", _tripwire("terraform apply"))
    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "provision", "dev", "--yes", "--json"])
    assert result.exit_code == 2, result.output
    assert "the plan's resource graph is broken, nothing was applied" in result.stderr
    assert "dependency cycle: terraform_data." in result.stderr
    assert [p.name for p in shown] == ["plan.tfplan"] and shown[0].is_file()  # a real plan, made first
    assert not (project_copy / ".orchestrate" / "dev" / "inventory.yml").exists()
