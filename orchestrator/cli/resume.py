"""`orchestrate resume RUN_ID`: continue an interrupted or failed run from its first step not done.

The run's own command does the work: `resume` finds the environment whose journal holds the run,
checks that it can be resumed (saying why not), and re-invokes the recorded command line with
`--resume RUN_ID` appended. A verb is resumable when it takes a `--resume` option and passes it
to `orchestrator.runs.session.locked_run(resume=...)`, which re-checks under the environment lock.
"""

from __future__ import annotations

import click

from orchestrator import paths
from orchestrator.cli._common import AppContext, verb
from orchestrator.cli.runs import coordination_of
from orchestrator.errors import ConfigError, ExitStatus, OrchestratorError, UsageError
from orchestrator.ids import require_run_id
from orchestrator.runs.backend import Coordination, LocalCoordination, S3Coordination
from orchestrator.runs.journal import locate_run


def _locate(app: AppContext, run_id: str) -> Coordination:
    """The coordination whose journal holds `run_id`: a local journal under .orchestrate/, or the
    shared journal of an environment whose state is in S3 (a run started on another controller)."""
    state_root = paths.state_root(app.project_dir)
    unreadable: list[str] = []
    state_dir = locate_run(state_root, run_id, unreadable=unreadable)
    if state_dir is not None:
        return LocalCoordination(state_dir, state_dir.name)
    for env_name in app.project.environment_names():
        try:
            coordination = coordination_of(app, env_name)
        except ConfigError:
            continue
        if not isinstance(coordination, S3Coordination):
            continue
        try:
            if coordination.has_run(run_id):
                return coordination
        except OrchestratorError as exc:  # one unreachable bucket must not hide the others' runs
            unreadable.append(f"{env_name}: {exc.message}")
    hint = "`orchestrate runs ENV` lists the runs of an environment"
    if unreadable:
        hint += "; journals that could not be read (the run may be in one of them): " + "; ".join(unreadable)
    raise UsageError(f"no run {run_id} in the journal of any environment of {app.project_dir}", hint=hint)


@click.command("resume")
@click.argument("run_id")
@click.option("--lock-wait", type=float, default=None, metavar="SECONDS",
              help="Wait at most this long for the environment lock (0: exit 75 at once).")
@verb
def command(app: AppContext, run_id: str, lock_wait: float | None) -> int:
    """Continue run RUN_ID (see `orchestrate runs ENV`) from its first step not completed."""
    require_run_id(run_id, "RUN_ID")
    coordination = _locate(app, run_id)
    with coordination.journal(run_ids=[run_id]) as journal:
        point = journal.resume_point(run_id)  # NotResumable says why (exit 2, or 75 if one is active)
    record = point.run
    ctx = click.get_current_context()
    root = ctx.find_root().command
    target = root.get_command(ctx, record.argv[0]) if record.argv and isinstance(root, click.Group) else None
    options = {opt for p in target.params for opt in p.opts} if target is not None else set()
    if target is None or "--resume" not in options:
        raise UsageError(f"run {run_id} was `orchestrate {' '.join(record.argv) or record.command}`, "
                         "which cannot be resumed (its command takes no --resume)",
                         hint="run the command again instead")
    args = [*record.argv[1:], "--resume", run_id]
    if lock_wait is not None and "--lock-wait" in options:
        args += ["--lock-wait", f"{lock_wait:g}"]
    if app.json_output:
        args.append("--json")
    where = f"at step {point.step}" if point.step else "after its last step (only its completion is left)"
    app.info(f"resuming run {run_id} (orchestrate {' '.join(record.argv)}) {where} "
             f"after {', '.join(point.done) or 'no completed step'}")
    status = target.main(args, prog_name=f"orchestrate {record.argv[0]}", standalone_mode=False, obj=app)
    return int(status) if isinstance(status, int) else int(ExitStatus.OK)
