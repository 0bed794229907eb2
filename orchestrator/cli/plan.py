"""`orchestrate plan ENV`: render, init and plan; exit 4 when something would change."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.cli._terraform import ProgressPrinter, summary_table
from orchestrator.errors import ExitStatus
from orchestrator.fleet.provision import plan


@click.command("plan")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> ExitStatus:
    """Plan ENV's infrastructure and keep the plan file for `provision`.

    Shows add/change/destroy per resource type. Exit 0 when nothing would change, 4 when
    something would. The plan is kept at .orchestrate/ENV/terraform/plan.tfplan (+ .sha256).
    """
    loaded = app.load(env_name)
    app.info(f"planning {env_name} ({loaded.env.target})…")
    outcome = plan(loaded, on_progress=ProgressPrinter(app))

    def human() -> None:
        if outcome.changes:
            app.stdout_print(summary_table(outcome.summary, f"plan for {env_name}"))
        else:
            app.stdout_print(f"{env_name}: no changes; the infrastructure matches the configuration")
        app.info(f"plan file: {outcome.plan_file} (sha256 {outcome.plan_sha256[:12]})")

    app.emit(outcome.as_dict(), human)
    return ExitStatus.CHANGES if outcome.changes else ExitStatus.OK
