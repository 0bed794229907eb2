"""What `check` and `up` share: the release gates' progress lines and their table."""

from __future__ import annotations

from collections.abc import Callable

from rich.markup import escape
from rich.table import Table

from orchestrator.cli._common import AppContext
from orchestrator.pipeline.gates import GATES, GateReport, GateResult

_STYLE = {"ok": "green", "failed": "bold red", "skipped": "yellow"}

#: findings shown per gate in the table (--json has every one)
TABLE_FINDINGS = 10


def gate_progress(app: AppContext) -> Callable[[GateResult], None]:
    """One stderr line per gate as it ends."""

    def show(result: GateResult) -> None:
        style = _STYLE[result.status]
        app.info(f"  [{style}]{result.status:>7}[/{style}] {result.name} ({result.seconds:.1f}s)")

    return show


def gates_table(report: GateReport) -> Table:
    """One row per gate: name, status, seconds, tool version, findings (or what passed, or why skipped)."""
    table = Table(title=f"release gates of {report.env}", title_justify="left", show_lines=True)
    table.add_column("gate", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("s", justify="right")
    table.add_column("tool")
    table.add_column("findings / detail", overflow="fold")
    for gate in report.gates:
        style = _STYLE[gate.status]
        shown = list(gate.findings[:TABLE_FINDINGS])
        if len(gate.findings) > TABLE_FINDINGS:
            shown.append(f"... and {len(gate.findings) - TABLE_FINDINGS} more (--json)")
        table.add_row(gate.name, f"[{style}]{gate.status}[/{style}]", f"{gate.seconds:.1f}",
                      escape(gate.version or "-"), escape("\n".join(shown) or gate.detail))
    return table


def render_report(app: AppContext, result: object) -> None:
    """The gates' table of a failed gate stage (the verb boundary shows it before the error)."""
    if isinstance(result, GateReport):
        app.stdout_print(gates_table(result))


SKIP_HELP = ("Pass gate NAME over (repeatable; needs --reason; refused for a protected environment; "
             "recorded in the audit log). Gates: " + ", ".join(GATES) + ".")
