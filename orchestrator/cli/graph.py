"""`orchestrate graph ENV --format dot|json|mermaid`: the resource DAG joined with the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.errors import ExitStatus
from orchestrator.models.graph import FORMATS, DestroyComparison, to_json
from orchestrator.verify.graph import environment_graph


@click.command("graph")
@env_argument
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="dot", show_default=True,
              help="Output format.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the graph to this file instead of stdout.")
@verb
def command(app: AppContext, env_name: str, fmt: str, output: Path | None) -> ExitStatus:
    """Print ENV's dependency graph: resources from the plan, then the pipeline stages.

    Reads .orchestrate/ENV/terraform/plan.json or the saved plan.tfplan when present,
    otherwise plans (a scratch plan for the local target). Edges point from a dependency to
    what depends on it; dashed edges come from depends_on. Once the environment has state,
    the destroy order is compared with `terraform graph -type=plan-destroy`. Exit 1 when the
    graph has a cycle, a dangling reference or a destroy-order mismatch (listed on stderr).
    """
    outcome = environment_graph(app.project_dir, env_name)
    app.info(f"{env_name}: plan from {outcome.source}; {outcome.report.resources} resources")
    for problem in outcome.report.problems:
        click.echo(f"graph problem: {problem}", err=True)
    if app.json_output:
        app.emit({"env": env_name, "source": outcome.source, "ok": outcome.report.ok,
                  "problems": [str(p) for p in outcome.report.problems],
                  "destroy_order": outcome.report.destroy_order,
                  "terraform_destroy": _comparison(outcome.report.terraform_destroy), **to_json(outcome.graph)})
    else:
        text = FORMATS[fmt](outcome.graph)
        if output is not None:
            output.write_text(text)
            app.info(f"wrote {output}")
        else:
            click.echo(text, nl=False)
    return ExitStatus.OK if outcome.report.ok else ExitStatus.FAILED


def _comparison(comparison: DestroyComparison | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {"source": comparison.source, "edges_checked": comparison.edges_checked,
            "resources_compared": comparison.resources_compared, "not_in_state": comparison.not_in_state}
