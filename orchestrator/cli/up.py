"""`orchestrate up ENV`: build, provision, deploy and verify in one journalled, locked run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.cli._gates import SKIP_HELP, gate_progress, render_report
from orchestrator.cli._release import progress
from orchestrator.cli._terraform import ProgressPrinter, ensure_local_image, summary_table
from orchestrator.ids import require_run_id
from orchestrator.pipeline.up import UpRequest, UpResult, up
from orchestrator.tools.download import is_url


def _status_table(status: dict[str, Any]) -> Table:
    table = Table("host", "address", "release", "previous", "unit", "healthy", box=None)
    for host in status.get("hosts", []):
        healthy = "[green]yes[/green]" if host.get("healthy") else "[red]no[/red]"
        table.add_row(host["name"], host.get("address") or "-", host.get("release") or "-",
                      host.get("previous_release") or "-", host.get("unit") or "-", healthy)
    return table


@click.command("up")
@env_argument
@click.option("--release", "release", default=None, metavar="PATH|URL",
              help="A built binary, a cargo project directory (tested and built first), a .tar.gz bundle, or "
                   "an https://, http:// or s3:// URL of one (with --sha256).")
@click.option("--sha256", default=None, metavar="HEX",
              help="sha256 of the release file: required for a URL, checked for a local file.")
@click.option("--version", "version", default=None, metavar="VERSION",
              help="The release's version (default: the bundle's VERSION file, else `BINARY --version`).")
@click.option("--yes", is_flag=True, help="Change a protected environment without asking (required without a TTY).")
@lock_wait_option
@click.option("--force", is_flag=True, help="Run every stage even when nothing changed.")
@click.option("--skip-gate", "skip_gates", multiple=True, metavar="NAME", help=SKIP_HELP)
@click.option("--reason", default="", metavar="TEXT", help="Why the gates named by --skip-gate are skipped.")
@click.option("--resume", "resume", metavar="RUN_ID", default=None, hidden=True,
              help="Continue run RUN_ID (used by `orchestrate resume`).")
@verb
def command(app: AppContext, env_name: str, release: str | None, sha256: str | None, version: str | None,
            yes: bool, lock_wait: float, force: bool, skip_gates: tuple[str, ...], reason: str,
            resume: str | None) -> None:
    """Bring ENV to the wanted state: build -> render -> gates -> provision -> inventory -> backup
    -> deploy -> lb -> monitoring -> verify, each step journalled; `orchestrate resume RUN_ID`
    continues an interrupted run. A failed release gate (see `orchestrate check`) refuses the
    release before any host changes (exit 1, the findings listed)."""
    if resume is not None:
        require_run_id(resume, "--resume")
    loaded = app.load(env_name)
    argv = ["up", env_name]
    release_path: Path | str | None = None
    if release is not None:
        release_path = release if is_url(release) else Path(release).resolve()
        argv += ["--release", str(release_path), *(["--sha256", sha256] if sha256 else []),
                 *(["--version", version] if version else [])]
    if yes:
        argv.append("--yes")
    if force:
        argv.append("--force")
    for name in skip_gates:
        argv += ["--skip-gate", name]
    if reason:
        argv += ["--reason", reason]

    def confirm(plan: Any) -> bool:
        app.print_table(summary_table(plan.summary, f"plan for {env_name}"), err=True)
        return click.confirm(f"apply this plan to protected environment {env_name}?", default=False, err=True)

    ensure_local_image(app, loaded)
    request = UpRequest(argv=argv, release_path=release_path, sha256=sha256, version=version, yes=yes,
                        interactive=app.interactive, lock_wait=lock_wait, resume=resume, force=force,
                        confirm=confirm, skip_gates=skip_gates, skip_reason=reason)
    app.result_renderer = lambda result: render_report(app, result)  # the gates' table when they refuse
    result: UpResult = up(loaded, request, info=app.info, on_terraform=ProgressPrinter(app),
                          on_host_event=progress(app, "up"), on_gate=gate_progress(app))

    def human() -> None:
        if result.status:
            app.stdout_print(_status_table(result.status))
        what = "no-op" if result.noop else "completed"
        app.stdout_print(f"up {env_name} {what}: release {result.release or '-'}, run {result.run_id}"
                         + (f" ({result.duration:.1f} s)" if result.duration is not None else ""))

    app.emit(result.as_dict(), human)
