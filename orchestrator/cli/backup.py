"""`orchestrate backup ENV`: back up every app host (data dir, release id, config) now."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.cli._release import human_size, progress_sink
from orchestrator.release.backup import DEFAULT_KEEP, BackupResult, create_backup
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.session import locked_run


@click.command("backup")
@env_argument
@click.option("--keep", type=click.IntRange(min=1), default=DEFAULT_KEEP, show_default=True,
              help="Backups kept per host, on the hosts and on the controller.")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, keep: int, lock_wait: float) -> None:
    """Back up the data dir, release id and config of every app host of ENV.

    Each host keeps /var/backups/SERVICE/ID/ (with config.env, which holds secrets and never
    leaves the host); the controller keeps .orchestrate/ENV/backups/ID/HOST/ (archive,
    release id, manifest). Prints the backup id and the size per host.
    """
    loaded = app.load(env_name)
    app.info(f"backing up the app hosts of {env_name} ...")
    # The environment lock keeps a deploy or restore from changing the hosts mid-backup; the
    # journal lists the run in `orchestrate runs`.
    with locked_run(coordination_for(loaded), command="backup", argv=["backup", env_name], steps=["backup"],
                    wait=lock_wait, on_wait=app.info, env=env_name) as session, \
            session.run.step("backup") as step:
        result = create_backup(loaded, keep=keep, on_event=None if app.json_output else progress_sink(app))
        step.detail.update(backup_id=result.id, hosts=len(result.hosts))

    def human() -> None:
        _print_result(app, result)

    app.emit(result.as_dict(), human)



def _print_result(app: AppContext, result: BackupResult) -> None:
    app.stdout_print(result.id)
    for host in result.hosts:
        app.stdout_print(f"  {host.host}: {human_size(host.size)} (release {host.release_id})")
    if result.removed:
        app.info(f"retention removed {len(result.removed)} old backup copies on the controller")
