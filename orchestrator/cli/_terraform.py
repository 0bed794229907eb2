"""What the Terraform verbs (plan, provision, drift, destroy) share: progress and summary tables."""

from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Table

from orchestrator.cli._common import AppContext
from orchestrator.tools.terraform import ACTION_COLUMNS, PlanSummary, ProgressEvent

_VERBS = {"create": "creating", "update": "updating", "delete": "destroying", "replace": "replacing",
          "read": "reading", "noop": "unchanged"}
_DONE = {"create": "created", "update": "updated", "delete": "destroyed", "replace": "replaced", "read": "read"}


class ProgressPrinter:
    """Live terraform progress on stderr: one line per resource start, progress and completion.

    `  ADDRESS: creating…`, `  ADDRESS: still creating (10s)`, `  ADDRESS: created (12s)`: the
    resource, what happens to it and terraform's elapsed seconds for it.
    """

    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.started = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if self.app.json_output:
            return
        elapsed = f" ({event.elapsed:.0f}s)" if event.elapsed is not None else ""
        # addresses carry brackets (aws_instance.app[0], ["key"]): never rich markup
        address = escape(event.address)
        if event.phase == "start":
            self.app.stderr.print(f"  {address}: {_VERBS.get(event.action, event.action)}…")
        elif event.phase == "progress":
            self.app.stderr.print(f"  {address}: still {_VERBS.get(event.action, event.action)}{elapsed}",
                                  style="dim")
        elif event.phase == "complete":
            self.app.stderr.print(f"  [green]{address}: {_DONE.get(event.action, event.action)}{elapsed}[/green]")
        elif event.phase == "errored":
            self.app.stderr.print(f"  [red]{address}: {event.action} failed{elapsed}[/red]")
        elif event.phase == "drift":
            self.app.stderr.print(f"  [yellow]{address}: changed outside Terraform[/yellow]")


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
