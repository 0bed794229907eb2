"""The resource DAG from a real plan JSON (tests/fixtures/plans/plan.json, made by terraform 1.11)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from orchestrator.models import graph as g

PLAN = Path(__file__).resolve().parents[2] / "fixtures" / "plans" / "plan.json"


@pytest.fixture
def plan() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PLAN.read_text())
    return data


def _fleet(plan: dict[str, Any]) -> dict[str, Any]:
    module: dict[str, Any] = plan["configuration"]["root_module"]["module_calls"]["fleet"]["module"]
    return module


def _resource(module: dict[str, Any], address: str) -> dict[str, Any]:
    return next(r for r in module["resources"] if r["address"] == address)


@pytest.mark.parametrize(("reference", "expected"), [
    ("aws_vpc.this.id", g.Ref("resource", "aws_vpc.this")),
    ("aws_instance.app[0].private_ip", g.Ref("resource", "aws_instance.app")),
    ('aws_instance.app["a"]', g.Ref("resource", "aws_instance.app")),
    ("data.aws_ami.debian.id", g.Ref("resource", "data.aws_ami.debian")),
    ("var.subnet", g.Ref("var", "subnet")),
    ("local.prefix", g.Ref("local", "prefix")),
    ("module.fleet.hosts", g.Ref("module_output", "fleet", "hosts")),
    ("module.fleet[0].hosts", g.Ref("module_output", "fleet", "hosts")),
    ("module.fleet", g.Ref("module", "fleet")),
    ("each.key", g.Ref("ignored", "each.key")),
    ("count.index", g.Ref("ignored", "count.index")),
    ("path.module", g.Ref("ignored", "path.module")),
    ("self.id", g.Ref("ignored", "self.id")),
])
def test_references_are_normalised(reference: str, expected: g.Ref) -> None:
    assert g.parse_reference(reference) == expected


def test_graph_follows_references_modules_and_depends_on(plan: dict[str, Any]) -> None:
    build = g.resource_graph(plan)
    graph = build.graph
    resources = {n for n, kind in graph.nodes(data="kind") if kind == "resource"}
    assert resources == {
        "terraform_data.network", "terraform_data.firewall", "terraform_data.dns", "terraform_data.backup",
        "module.fleet.terraform_data.host", "module.fleet.terraform_data.this",
        "module.fleet.module.disk.terraform_data.disk",
    }
    edges = set(graph.edges)
    # var.network inside the module comes from the caller's terraform_data.network
    assert ("terraform_data.network", "module.fleet.terraform_data.host") in edges
    # module-level depends_on reaches every resource in the module, nested ones included
    assert ("terraform_data.firewall", "module.fleet.module.disk.terraform_data.disk") in edges
    # module.fleet.hosts -> output hosts -> terraform_data.host (not every resource of the module)
    assert ("module.fleet.terraform_data.host", "terraform_data.dns") in edges
    assert ("module.fleet.terraform_data.this", "terraform_data.dns") not in edges
    # module.disk.ids inside fleet, two levels down
    assert ("module.fleet.module.disk.terraform_data.disk", "module.fleet.terraform_data.this") in edges
    assert graph.edges["terraform_data.dns", "terraform_data.backup"]["via"] == "depends_on"
    assert ("module.fleet.terraform_data.host", "output.hosts") in edges
    assert build.dangling == []
    assert build.opaque_references == {"local.prefix"}


def test_graph_matches_terraforms_own_graph(plan: dict[str, Any]) -> None:
    """`terraform graph` (saved beside the plan) draws dependent -> dependency, transitively
    reduced; the transitive closures must agree."""
    dot = (PLAN.parent / "graph.dot").read_text()
    theirs = nx.DiGraph()
    for line in dot.splitlines():
        if "->" in line:
            dependent, dependency = (part.strip(' ";') for part in line.split("->"))
            theirs.add_edge(dependency, dependent)
    ours = g.resource_graph(plan).graph.subgraph(
        n for n, kind in g.resource_graph(plan).graph.nodes(data="kind") if kind == "resource")
    assert set(nx.transitive_closure_dag(ours).edges) == set(nx.transitive_closure_dag(theirs).edges)


def test_check_plan_passes_and_destroy_order_is_reverse_topological(plan: dict[str, Any]) -> None:
    report = g.check_plan(plan)
    assert report.ok, report.problems
    assert report.resources == 7
    assert report.terraform_destroy is None  # no terraform destroy graph given: nothing compared
    order = report.destroy_order
    assert order.index("terraform_data.backup") < order.index("terraform_data.dns")
    assert order.index("module.fleet.terraform_data.host") < order.index("terraform_data.network")
    assert order[-1] == "terraform_data.network"


# --- against terraform's own destroy graph (plan-destroy.dot: terraform 1.11 after an apply) ----

DESTROY_DOT = Path(__file__).resolve().parent / "plan-destroy.dot"
DNS = '"[root] terraform_data.dns (destroy)"'
BACKUP = '"[root] terraform_data.backup (destroy)"'


def test_terraforms_destroy_graph_is_read_with_its_direction() -> None:
    destroy = g.parse_destroy_graph(DESTROY_DOT.read_text())
    assert set(destroy.nodes) == {
        "terraform_data.network", "terraform_data.firewall", "terraform_data.dns", "terraform_data.backup",
        "module.fleet.terraform_data.host", "module.fleet.terraform_data.this",
        "module.fleet.module.disk.terraform_data.disk",
    }
    # "network (destroy)" -> "firewall (destroy)": network's destroy waits for firewall's
    assert destroy.destroyed_before("terraform_data.firewall", "terraform_data.network")
    assert not destroy.destroyed_before("terraform_data.network", "terraform_data.firewall")
    # transitively: backup -> dns -> host -> firewall -> network
    assert destroy.destroyed_before("terraform_data.backup", "terraform_data.network")


def test_the_dag_agrees_with_terraforms_destroy_graph(plan: dict[str, Any]) -> None:
    report = g.check_plan(plan, terraform_destroy=g.parse_destroy_graph(DESTROY_DOT.read_text()))
    assert report.ok, report.problems
    comparison = report.terraform_destroy
    assert comparison is not None
    assert comparison.edges_checked == g.resource_graph(plan).graph.subgraph(
        n for n, kind in g.resource_graph(plan).graph.nodes(data="kind") if kind == "resource").number_of_edges()
    assert comparison.resources_compared == 7 and comparison.not_in_state == []


def test_terraform_destroying_a_dependency_first_is_a_mismatch_naming_both(plan: dict[str, Any]) -> None:
    # terraform would destroy dns first, then backup, although backup depends on dns
    dot = DESTROY_DOT.read_text().replace(f"{DNS} -> {BACKUP}", f"{BACKUP} -> {DNS}")
    report = g.check_plan(plan, terraform_destroy=g.parse_destroy_graph(dot))
    assert not report.ok
    assert [str(p) for p in report.problems] == [
        "terraform_data.backup: depends on terraform_data.dns, but terraform destroys terraform_data.dns before "
        "terraform_data.backup (terraform graph -type=plan-destroy)"]
    assert report.problems[0].check == "destroy-order"


def test_an_ordering_terraform_does_not_have_is_a_mismatch(plan: dict[str, Any]) -> None:
    dot = DESTROY_DOT.read_text().replace(f"{DNS} -> {BACKUP}", "")
    comparison = g.check_destroy_against_terraform(g.resource_graph(plan).graph, g.parse_destroy_graph(dot),
                                                   source="fixture")
    assert [str(p) for p in comparison.problems] == [
        "terraform_data.backup: depends on terraform_data.dns, but terraform's destroy graph does not order "
        "terraform_data.backup before terraform_data.dns (fixture)"]


def test_resources_not_in_state_are_listed_not_compared(plan: dict[str, Any]) -> None:
    dot = "\n".join(line for line in DESTROY_DOT.read_text().splitlines() if "terraform_data.backup" not in line)
    comparison = g.check_destroy_against_terraform(g.resource_graph(plan).graph, g.parse_destroy_graph(dot))
    assert comparison.problems == []
    assert comparison.not_in_state == ["terraform_data.backup"]
    assert comparison.resources_compared == 6


def test_a_wrong_destroy_order_is_reported(plan: dict[str, Any]) -> None:
    graph = g.resource_graph(plan).graph
    problems = g.check_destroy_order(graph, g.creation_order(graph))
    assert any(p.subject == "terraform_data.backup" and "after terraform_data.dns" in p.message for p in problems)


def test_a_cycle_is_caught_with_its_path(plan: dict[str, Any]) -> None:
    broken = copy.deepcopy(plan)
    network = _resource(broken["configuration"]["root_module"], "terraform_data.network")
    network["depends_on"] = ["terraform_data.backup"]
    report = g.check_plan(broken)
    assert not report.ok
    (problem,) = [p for p in report.problems if p.check == "acyclic"]
    assert problem.message.startswith("dependency cycle: ")
    cycle = problem.message.removeprefix("dependency cycle: ").split(" -> ")
    assert cycle[0] == cycle[-1]
    assert {"terraform_data.network", "terraform_data.backup", "terraform_data.dns"} <= set(cycle)
    assert report.destroy_order == []


@pytest.mark.parametrize(("reference", "expected"), [
    ("terraform_data.nope.id", "reference 'terraform_data.nope.id' points at no resource 'terraform_data.nope' "
                               "in module.fleet"),
    ("var.missing", "reference 'var.missing' points at no variable 'missing' in module.fleet"),
    ("module.ghost.ids", "reference 'module.ghost.ids' points at no module call 'ghost' in module.fleet"),
    ("module.disk.nothing",
     "reference 'module.disk.nothing' points at no output 'nothing' in module.fleet.module.disk"),
])
def test_a_dangling_reference_names_its_source_and_missing_target(
        plan: dict[str, Any], reference: str, expected: str) -> None:
    broken = copy.deepcopy(plan)
    this = _resource(_fleet(broken), "terraform_data.this")
    this["expressions"]["input"]["references"] = [reference]
    report = g.check_plan(broken)
    assert [str(p) for p in report.problems] == [f"module.fleet.terraform_data.this: {expected}"]


def test_pipeline_graph_joins_stages(plan: dict[str, Any]) -> None:
    joined = g.pipeline_graph(g.resource_graph(plan).graph, {"app": ["dev-app-1"], "monitoring": ["dev-mon-1"]})
    order = g.creation_order(joined)
    chain = ["stage.provision", "stage.inventory", "stage.backup", "stage.deploy", "stage.verify"]
    assert [n for n in order if n in chain] == chain
    assert order.index("terraform_data.backup") < order.index("stage.provision")
    assert order.index("output.hosts") < order.index("stage.inventory") < order.index("stage.monitoring")
    assert joined.nodes["stage.deploy"]["hosts"] == ["dev-app-1"]
    assert joined.nodes["stage.monitoring"]["touches"] == "group monitoring"
    assert joined.nodes["stage.monitoring"]["hosts"] == ["dev-mon-1"]
    assert g.find_cycle(joined) is None


def test_renderings(plan: dict[str, Any]) -> None:
    joined = g.pipeline_graph(g.resource_graph(plan).graph)
    dot = g.to_dot(joined)
    assert dot.startswith('digraph "orchestrate" {')
    assert '"terraform_data.dns" -> "terraform_data.backup" [style=dashed];' in dot
    data = json.loads(g.FORMATS["json"](joined))
    assert {"from": "stage.deploy", "to": "stage.verify", "via": "stage"} in data["edges"]
    mermaid = g.to_mermaid(joined)
    assert mermaid.startswith("flowchart LR\n")
    assert mermaid.count("-->") + mermaid.count("-.->") == joined.number_of_edges()


def test_not_a_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="not a plan JSON"):
        g.resource_graph({"format_version": "1.2"})
