"""The resource graph from plans made by the real terraform: the fixture root, local_fleet and
aws_fleet (on a moto server)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from orchestrator.models import graph as g
from orchestrator.tools.process import run_command
from tests.support.cli import run_orchestrate
from tests.support.project import PLANS

pytestmark = pytest.mark.integration

TF_ENV = {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "TF_CLI_CONFIG_FILE": "/dev/null"}


def _terraform(root: Path, *args: str) -> str:
    return run_command(["terraform", *args], cwd=root, env=TF_ENV, timeout=300).stdout


def _plan_json(root: Path) -> dict[str, Any]:
    _terraform(root, "init", "-input=false", "-no-color")
    _terraform(root, "plan", "-input=false", "-no-color", "-out=fixture.tfplan")
    data: dict[str, Any] = json.loads(_terraform(root, "show", "-json", "fixture.tfplan"))
    return data


def test_fixture_plan_from_real_terraform_matches_the_checked_in_one(fixture_root: Path) -> None:
    plan = _plan_json(fixture_root)
    checked_in = json.loads((PLANS / "plan.json").read_text())
    # the configuration section is what the graph reads; it must not have drifted from the fixture
    assert plan["configuration"] == checked_in["configuration"]
    report = g.check_plan(plan)
    assert report.ok, report.problems
    assert report.resources == 7


def test_graph_agrees_with_terraform_graph(fixture_root: Path) -> None:
    plan = _plan_json(fixture_root)
    dot = _terraform(fixture_root, "graph")
    theirs = nx.DiGraph()
    for line in dot.splitlines():
        if "->" in line:
            dependent, dependency = (part.strip(' ";') for part in line.split("->"))
            theirs.add_edge(dependency, dependent)
    built = g.resource_graph(plan).graph
    ours = built.subgraph(n for n, kind in built.nodes(data="kind") if kind == "resource")
    assert set(nx.transitive_closure_dag(ours).edges) == set(nx.transitive_closure_dag(theirs).edges)


DESTROY_FIXTURE = Path(__file__).resolve().parents[2] / "unit" / "models" / "plan-destroy.dot"


def _destroy_edges(destroy: g.DestroyGraph) -> set[tuple[str, str]]:
    return {(a, b) for a in destroy.nodes for b in destroy.nodes if a != b and destroy.destroyed_before(a, b)}


def test_destroy_order_agrees_with_terraforms_destroy_graph(fixture_root: Path) -> None:
    """After a real apply (terraform_data only: nothing outside the root), terraform's own
    destroy graph destroys every dependent before its dependency, and the unit tests' fixture
    is still what terraform draws."""
    plan = _plan_json(fixture_root)
    assert _terraform(fixture_root, "graph", "-type=plan-destroy").count("(destroy)") == 0  # no state yet
    _terraform(fixture_root, "apply", "-input=false", "-no-color", "-auto-approve", "fixture.tfplan")
    destroy = g.parse_destroy_graph(_terraform(fixture_root, "graph", "-type=plan-destroy"))
    report = g.check_plan(plan, terraform_destroy=destroy)
    assert report.ok, report.problems
    assert report.terraform_destroy is not None
    assert report.terraform_destroy.edges_checked == 9 and report.terraform_destroy.not_in_state == []
    assert _destroy_edges(destroy) == _destroy_edges(g.parse_destroy_graph(DESTROY_FIXTURE.read_text()))


def test_terraform_refuses_what_the_graph_check_reports(fixture_root: Path) -> None:
    """A dangling reference never reaches a plan: terraform itself refuses it at plan time, so
    the graph check's own finding on a plan JSON is a second line, not the only one."""
    main = fixture_root / "main.tf"
    main.write_text(main.read_text().replace("terraform_data.network.output.name", "terraform_data.nope.output"))
    _terraform(fixture_root, "init", "-input=false", "-no-color")
    result = run_command(["terraform", "plan", "-input=false", "-no-color"], cwd=fixture_root, env=TF_ENV,
                         timeout=300, check=False)
    assert result.returncode == 1
    assert "terraform_data.nope" in result.stderr


def test_graph_verb_on_the_local_fleet(project_copy: Path) -> None:
    result = run_orchestrate(project_copy, "graph", "dev", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    ids = {n["id"]: n for n in data["nodes"]}
    assert ids["module.fleet.terraform_data.host"]["kind"] == "resource"
    edges = {(e["from"], e["to"]) for e in data["edges"]}
    assert ("module.fleet.terraform_data.host", "output.hosts") in edges
    assert ("output.hosts", "stage.inventory") in edges
    assert ("stage.deploy", "stage.verify") in edges
    assert data["destroy_order"] == ["module.fleet.terraform_data.host"]
    mermaid = run_orchestrate(project_copy, "graph", "dev", "--format", "mermaid")
    assert mermaid.returncode == 0 and mermaid.stdout.startswith("flowchart LR")


@pytest.mark.slow
def test_graph_of_the_aws_fleet_from_a_real_plan_on_moto(aws_env: str, project_copy: Path) -> None:
    assert run_orchestrate(project_copy, "bootstrap", "prod").returncode == 0
    planned = run_orchestrate(project_copy, "plan", "prod", "--json")
    assert planned.returncode == 4, planned.stderr  # 4: changes to make (everything is new)
    result = run_orchestrate(project_copy, "graph", "prod", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"].endswith("plan.tfplan")
    edges = {(e["from"], e["to"]) for e in data["edges"]}
    fleet = "module.fleet."
    for dependency, dependent in [("aws_vpc.this", "aws_subnet.this"),
                                  ("aws_subnet.this", "aws_instance.app"),
                                  ("aws_security_group.app", "aws_instance.app"),
                                  ("aws_key_pair.this", "aws_instance.app")]:
        assert (fleet + dependency, fleet + dependent) in edges
    order = data["destroy_order"]
    assert order.index(fleet + "aws_instance.app") < order.index(fleet + "aws_subnet.this") \
        < order.index(fleet + "aws_vpc.this")
    verify = run_orchestrate(project_copy, "verify", "prod", "--check", "resource-graph", "--json")
    assert verify.returncode == 0, verify.stdout
    (check,) = json.loads(verify.stdout)["checks"]
    assert check["status"] == "ok" and "plan.tfplan" in check["detail"]
    assert "destroy order not compared with terraform's destroy graph: no resources in the state" in check["detail"]

    # once applied (the pre-flight graph check passed first), the destroy order is compared with
    # terraform's own destroy graph of the environment's root
    provisioned = run_orchestrate(project_copy, "provision", "prod", "--yes", "--json")
    assert provisioned.returncode == 0, provisioned.stderr
    assert json.loads(provisioned.stdout)["preflight"] == ["references", "acyclic"]
    verify = run_orchestrate(project_copy, "verify", "prod", "--check", "resource-graph", "--json")
    assert verify.returncode == 0, verify.stdout
    (check,) = json.loads(verify.stdout)["checks"]
    compared = re.search(r"terraform destroys dependents first on all (\d+) dependency edge\(s\) among (\d+) "
                         r"resource\(s\) \(graph -type=plan-destroy in \.orchestrate/prod/terraform\)", check["detail"])
    assert compared is not None, check["detail"]
    assert int(compared.group(1)) >= 6 and int(compared.group(2)) >= 5, check["detail"]
