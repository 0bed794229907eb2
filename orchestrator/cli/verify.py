"""`orchestrate verify ENV`: every static check, with a per-check report; exit 0 or 1."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.errors import ExitStatus
from orchestrator.verify.core import CheckResult, VerifyReport
from orchestrator.verify.runner import check_names, run_verify

_STYLE = {"ok": "green", "failed": "bold red", "skipped": "yellow"}


def report_table(report: VerifyReport) -> Table:
    """One row per check: name, status, seconds, detail."""
    table = Table(title=f"verify {report.env}", title_justify="left", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("s", justify="right")
    table.add_column("detail", overflow="fold")
    for result in report.checks:
        style = _STYLE[result.status]
        table.add_row(result.name, f"[{style}]{result.status}[/{style}]", f"{result.duration:.1f}",
                      escape(result.detail))
    return table


@click.command("verify")
@env_argument
@click.option("--check", "only", multiple=True, metavar="NAME",
              help="Run only this check (repeatable): " + ", ".join(check_names()) + ".")
@verb
def command(app: AppContext, env_name: str, only: tuple[str, ...]) -> ExitStatus:
    """Run every static check for ENV before anything touches a host.

    terraform fmt and validate, ansible-playbook --syntax-check and ansible-lint (production
    profile), promtool/amtool and the heal policy, the resource graph (no cycle, every reference
    resolves; once the environment has state, terraform's own destroy graph destroys every
    dependent before its dependency) and the exhaustive deploy model. Exit 0 when no check
    failed (skipped checks name what is missing), 1 otherwise. `up` runs the fast ones
    (environment, heal-policy, deploy-model) itself right after rendering.
    """

    def progress(result: CheckResult) -> None:
        style = _STYLE[result.status]
        app.info(f"  [{style}]{result.status:>7}[/{style}] {result.name} ({result.duration:.1f}s)")

    app.info(f"verifying {env_name}…")
    report = run_verify(app.project_dir, env_name, only=list(only) or None, on_result=progress)

    def human() -> None:
        app.stdout_print(report_table(report))
        counts = report.as_dict()["counts"]
        verdict = "[green]ok[/green]" if report.ok else "[bold red]FAILED[/bold red]"
        app.stdout_print(f"{env_name}: {verdict} — {counts['ok']} ok, {counts['failed']} failed, "
                         f"{counts['skipped']} skipped")

    app.emit(report.as_dict(), human)
    return ExitStatus.OK if report.ok else ExitStatus.FAILED
