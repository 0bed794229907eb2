"""The resource-graph check: the dependency graph from Terraform's plan JSON, checked for cycles,
its creation and destroy orders, and the destroy order compared with Terraform's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.errors import TerraformError
from orchestrator.fleet.inventory import hosts_from_inventory, load_inventory
from orchestrator.fleet.provision import terraform_for
from orchestrator.models import graph as graph_model
from orchestrator.tools.terraform import INIT_STAMP, graph_argv
from orchestrator.verify.core import Outcome, VerifyContext, check, failed, ok, skipped
from orchestrator.verify.workspace import _workspace

SAVED_PLAN_JSON = "plan.json"


SAVED_PLAN_FILE = "plan.tfplan"


def saved_plan_json(loaded: LoadedEnvironment) -> Path | None:
    """.orchestrate/ENV/terraform/plan.json when present and not older than the saved plan file."""
    directory = loaded.paths.terraform
    saved = directory / SAVED_PLAN_JSON
    plan_file = directory / SAVED_PLAN_FILE
    if saved.is_file() and (not plan_file.exists() or saved.stat().st_mtime >= plan_file.stat().st_mtime):
        return saved
    return None


GRAPH_PLAN_FILE = "graph.tfplan"


def environment_plan(ctx: VerifyContext, *, remote_plan: bool = False) -> tuple[dict[str, Any], str] | None:
    """The env's plan JSON and where it came from; None when none can be had cheaply.

    In order: the saved plan JSON, `terraform show -json` of the saved plan file, for the
    local target (no provider, no credentials) a fresh plan in the scratch workspace, and with
    `remote_plan` a plan of the environment's own root into graph.tfplan (which needs the
    backend and the provider's credentials; the reviewed plan.tfplan is left alone).
    """
    if ctx._plan is not None:
        return ctx._plan, ctx._plan_source
    loaded = ctx.env
    found: tuple[dict[str, Any], str] | None = None
    saved = saved_plan_json(loaded)
    plan_file = loaded.paths.terraform / SAVED_PLAN_FILE
    if saved is not None:
        found = json.loads(saved.read_text()), ctx.rel(saved)
    elif plan_file.is_file():
        found = terraform_for(loaded).show_plan(plan_file), ctx.rel(plan_file)
    elif loaded.env.target == "local":
        workspace = _workspace(ctx)
        scratch = workspace.directory / "verify.tfplan"
        workspace.terraform.plan(scratch)
        found = workspace.terraform.show_plan(scratch), f"a scratch plan in {ctx.rel(workspace.directory)}"
    elif remote_plan:
        terraform = terraform_for(loaded)
        terraform.init()
        graph_plan = terraform.working_dir / GRAPH_PLAN_FILE
        terraform.plan(graph_plan)
        found = terraform.show_plan(graph_plan), ctx.rel(graph_plan)
    if found is not None:
        ctx._plan, ctx._plan_source = found
    return found


def terraform_destroy_graph(ctx: VerifyContext) -> tuple[graph_model.DestroyGraph | None, str]:
    """Terraform's own destroy graph of the environment's root and where it came from, or None
    and why there is none.

    `terraform graph -type=plan-destroy` draws one destroy node per resource in the state (read
    through the root's backend: the S3 one needs the provider's credentials), so it is asked
    only of a root that provisioning initialised for exactly these files and, for the local
    backend, that has a state file. It only reads: nothing is initialised, planned or locked.
    """
    if "destroy-graph" in ctx.cache:
        cached: tuple[graph_model.DestroyGraph | None, str] = ctx.cache["destroy-graph"]
        return cached
    loaded = ctx.env
    terraform = terraform_for(loaded)
    root = terraform.working_dir
    stamp = root / ".terraform" / INIT_STAMP
    found: tuple[graph_model.DestroyGraph | None, str]
    if not stamp.is_file() or (loaded.env.target == "local" and not (root / "terraform.tfstate").is_file()):
        found = None, "nothing provisioned yet, so terraform has nothing to destroy"
    elif stamp.read_text().strip() != terraform.init_stamp():
        found = None, (f"{ctx.rel(root)} changed since it was last initialised: run `orchestrate plan "
                       f"{ctx.env_name}` first")
    else:
        source = f"{' '.join(graph_argv(plan_destroy=True)[1:])} in {ctx.rel(root)}"
        try:
            dot = terraform.graph(plan_destroy=True)
        except TerraformError as exc:
            # e.g. an S3 backend without credentials here: the comparison is not made, and says why
            reason = exc.message.strip().splitlines()[-1:] or ["no output"]
            found = None, f"{source} failed: {reason[0][:200]}"
        else:
            destroy = graph_model.parse_destroy_graph(dot)
            found = (destroy, source) if destroy.nodes else (None, f"no resources in the state ({source})")
    ctx.cache["destroy-graph"] = found
    return found


def _destroy_summary(report: graph_model.GraphReport, why_not: str) -> str:
    """What the destroy-order comparison covered, for a check's detail."""
    comparison = report.terraform_destroy
    if comparison is None:
        return f"destroy order not compared with terraform's destroy graph: {why_not}"
    missing = f"; not in state: {', '.join(comparison.not_in_state)}" if comparison.not_in_state else ""
    return (f"terraform destroys dependents first on all {comparison.edges_checked} dependency edge(s) among "
            f"{comparison.resources_compared} resource(s) ({comparison.source}){missing}")


@dataclass(frozen=True)
class GraphOutcome:
    """The environment's joined resource + stage graph, its checks, and where the plan came from."""

    env: str
    source: str
    graph: Any
    report: graph_model.GraphReport


def environment_graph(project_dir: Path, env_name: str) -> GraphOutcome:
    """Build the joined graph of `env_name` (planning when no plan is saved) and check it."""
    ctx = VerifyContext(project_dir=project_dir, env_name=env_name, loaded=Project(project_dir).load(env_name))
    found = environment_plan(ctx, remote_plan=True)
    if found is None:  # pragma: no cover - remote_plan always yields a plan or raises
        raise TerraformError(f"no plan for {env_name}")
    plan, source = found
    build = graph_model.resource_graph(plan)
    groups: dict[str, list[str]] = {}
    inventory = ctx.env.paths.inventory
    for host in hosts_from_inventory(load_inventory(inventory)):
        for group in host.groups:
            groups.setdefault(group, []).append(host.name)
    joined = graph_model.pipeline_graph(build.graph, groups)
    destroy, destroy_source = terraform_destroy_graph(ctx)
    report = graph_model.check_plan(plan, terraform_destroy=destroy, destroy_source=destroy_source)
    return GraphOutcome(env=env_name, source=source, graph=joined, report=report)


@check("resource-graph", "resource DAG: references resolve, no cycle, terraform's destroy graph destroys "
                         "dependents first")
def check_resource_graph(ctx: VerifyContext) -> Outcome:
    """Graph checks on the environment's plan JSON (skipped when no plan can be had cheaply),
    and the destroy order against terraform's own destroy graph once the root has state."""
    found = environment_plan(ctx)
    if found is None:
        return skipped(f"no saved plan for {ctx.env_name} (target {ctx.env.env.target} needs credentials to "
                       f"plan): run `orchestrate plan {ctx.env_name}` first")
    plan, source = found
    report = graph_model.check_plan(plan)
    why_not = "the graph itself is broken"
    if report.ok:
        destroy, why_not = terraform_destroy_graph(ctx)
        if destroy is not None:
            report = graph_model.check_plan(plan, terraform_destroy=destroy, destroy_source=why_not)
    if not report.ok:
        return failed("\n".join(str(p) for p in report.problems))
    opaque = f"; not followed (locals): {', '.join(report.opaque_references)}" if report.opaque_references else ""
    return ok(f"from {source}: {report.resources} resources, {report.edges} edges, acyclic, every reference "
              f"resolves, destroy order {' -> '.join(report.destroy_order[:4])}"
              f"{' ...' if len(report.destroy_order) > 4 else ''}; {_destroy_summary(report, why_not)}{opaque}")
