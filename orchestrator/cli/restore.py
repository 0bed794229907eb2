"""`orchestrate restore ENV BACKUP_ID`: put a backup back on every app host, health-gated."""

from __future__ import annotations

from typing import cast

import click

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.cli._release import progress_sink
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.release.backup import Source, check_backup_id, restore_backup
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.session import locked_run


@click.command("restore")
@env_argument
@click.argument("backup_id", metavar="BACKUP_ID")
@click.option("--from", "source", type=click.Choice(["host", "controller"]), default="host", show_default=True,
              help="Restore each host's own copy (with its config), or the controller's copy (data and release).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, backup_id: str, source: str, yes: bool, lock_wait: float) -> int:
    """Restore BACKUP_ID on every app host of ENV.

    Every copy is verified against its sha256 manifest before any host is touched; a corrupt
    backup is refused (exit 1) and nothing changes. Then, per host: stop the unit, restore the
    data dir, switch `current` to the backed-up release when it is still on the host, restore the
    config, start, and wait for the health gate.
    """
    loaded = app.load(env_name)
    check_backup_id(backup_id)
    if not yes:
        if not app.interactive:
            raise UsageError(f"restore replaces the data dir of every app host of {env_name}; pass --yes to confirm")
        if not click.confirm(f"Restore backup {backup_id} on every app host of {env_name} (data dir replaced)?",
                             err=True):
            app.info("not restored")
            return ExitStatus.FAILED
    app.info(f"restoring {backup_id} on the app hosts of {env_name} (from the {source} copies) ...")
    with locked_run(coordination_for(loaded), command="restore", argv=["restore", env_name, backup_id],
                    steps=["restore"], wait=lock_wait, on_wait=app.info, env=env_name) as session, \
            session.run.step("restore", backup_id=backup_id, source=source):
        result = restore_backup(loaded, backup_id, source=cast(Source, source),
                                on_event=None if app.json_output else progress_sink(app))

    def human() -> None:
        app.stdout_print(f"restored {result.id} on {len(result.hosts)} hosts; all healthy")

    app.emit(result.as_dict(), human)
    return ExitStatus.OK
