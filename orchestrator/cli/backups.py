"""`orchestrate backups ENV`: list the backups held on the controller, newest first."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.cli._release import human_size
from orchestrator.release.backup import list_backups


@click.command("backups")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> None:
    """List the backups of ENV kept under .orchestrate/ENV/backups/ (newest first)."""
    loaded = app.load(env_name)
    backups = list_backups(loaded)

    def human() -> None:
        if not backups:
            app.info(f"no backups of {env_name} on the controller (take one with `orchestrate backup {env_name}`)")
            return
        table = Table(box=None, pad_edge=False)
        for column in ("ID", "CREATED", "HOSTS", "SIZE", "RELEASES", "COMPLETE"):
            table.add_column(column)
        for backup in backups:
            releases = sorted({h.release_id for h in backup.hosts})
            created = backup.created.replace("T", " ").replace("+00:00", "Z")
            table.add_row(backup.id, created, str(len(backup.hosts)), human_size(backup.size),
                          ", ".join(releases), "yes" if backup.complete else "no")
        app.stdout_print(table)

    app.emit({"env": env_name, "backups": [b.as_dict() for b in backups]}, human)
