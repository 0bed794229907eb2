"""`orchestrate check ENV [--release PATH]`: the release gates alone; exit 0 or 1."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.cli._gates import SKIP_HELP, gate_progress, gates_table, render_report
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.pipeline.gates import GateRequest, check_release


@click.command("check")
@env_argument
@click.option("--release", "release_path", type=click.Path(path_type=Path), default=None,
              help="The release to gate: a cargo project (fmt, clippy, tests) or a built binary.")
@click.option("--skip-gate", "skip_gates", multiple=True, metavar="NAME", help=SKIP_HELP)
@click.option("--reason", default="", metavar="TEXT", help="Why the gates named by --skip-gate are skipped.")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, release_path: Path | None, skip_gates: tuple[str, ...], reason: str,
            lock_wait: float) -> ExitStatus:
    """Run ENV's release gates, the checks `orchestrate up` runs before anything changes on a host.

    For a cargo project: cargo fmt --check, cargo clippy --all-targets -- -D warnings, cargo test
    (offline). For the infrastructure: terraform fmt -check and validate, checkov on the rendered
    Terraform root (accepted findings, each with its reason: terraform/checkov-skips.yml),
    ansible-lint --profile production, promtool on the rules. Recorded as a run `check` in the
    journal. Exit 0 when no gate failed, 1 otherwise (the findings listed), 2 for a refused
    --skip-gate.
    """
    loaded = app.load(env_name)
    argv = ["check", env_name]
    if release_path is not None:
        if not release_path.exists():
            raise UsageError(f"--release {release_path}: no such file or directory")
        release_path = release_path.resolve()
        argv += ["--release", str(release_path)]
    for name in skip_gates:
        argv += ["--skip-gate", name]
    if reason:
        argv += ["--reason", reason]
    app.result_renderer = lambda result: render_report(app, result)
    app.info(f"release gates of {env_name}…")
    report = check_release(loaded, GateRequest(release_path=release_path, skip=skip_gates, reason=reason),
                           argv=argv, lock_wait=lock_wait, on_wait=app.info,
                           on_result=gate_progress(app))

    def human() -> None:
        app.stdout_print(gates_table(report))
        counts = {s: sum(1 for g in report.gates if g.status == s) for s in ("ok", "failed", "skipped")}
        app.stdout_print(f"{env_name}: [green]gates passed[/green] — {counts['ok']} ok, {counts['skipped']} skipped "
                         f"(run {report.run_id})")

    app.emit(report.as_dict(), human)
    return ExitStatus.OK
