"""What the Terraform verbs (plan, provision, drift, destroy) share: progress and summary tables."""

from __future__ import annotations

from rich.table import Table

from orchestrator.cli._common import AppContext
from orchestrator.cli._progress import StepProgress, TerraformProgress
from orchestrator.config.loader import LoadedEnvironment
from orchestrator.tools.terraform import ACTION_COLUMNS, PlanSummary


class ProgressPrinter(TerraformProgress):
    """Live terraform progress on stderr (cli/_progress.py): a bar of the resources done and a
    spinner per resource on a terminal; else one line per resource start and completion
    (`  ADDRESS: creating…`, `  ADDRESS: created (12s)`), and with -v the progress ticks."""


def summary_table(summary: PlanSummary, title: str) -> Table:
    """add/change/destroy per resource type, with a total row."""
    table = Table(title=title, title_justify="left")
    table.add_column("resource type")
    for column in ACTION_COLUMNS:
        table.add_column(column, justify="right")
    for rtype, counts in summary.by_type.items():
        table.add_row(rtype, *(str(counts.get(c, 0)) for c in ACTION_COLUMNS))
    totals = summary.totals
    table.add_section()
    table.add_row("total", *(str(totals[c]) for c in ACTION_COLUMNS), style="bold")
    return table


def ensure_local_image(app: AppContext, loaded: LoadedEnvironment) -> None:
    """A local fleet's host image, built (debootstrap, about a minute, once per machine) with its
    progress shown before terraform boots hosts from it; nothing when it is there or not local."""
    if loaded.env.target != "local":
        return
    from orchestrator.fleet.local.image import ImageRecipe, ImageStore

    store, recipe = ImageStore(), ImageRecipe()
    if not store.unpacked(recipe):
        store.ensure(recipe, on_progress=StepProgress(app, "local host image"))
