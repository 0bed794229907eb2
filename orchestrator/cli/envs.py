"""`orchestrate envs`: list the environments of the project."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, verb
from orchestrator.errors import ExitStatus, OrchestratorError


@click.command("envs")
@verb
def command(app: AppContext) -> ExitStatus:
    """List environments (name, target, protected, or the error in its file)."""
    rows: list[dict[str, Any]] = []
    status = ExitStatus.OK
    for name in app.project.environment_names():
        try:
            env = app.load(name).env
            rows.append({"name": name, "target": env.target, "protected": env.protected,
                         "description": env.description, "valid": True, "error": None})
        except OrchestratorError as exc:
            status = ExitStatus.BAD_INPUT
            rows.append({"name": name, "target": None, "protected": None, "description": "",
                         "valid": False, "error": exc.message})

    def human() -> None:
        table = Table("env", "target", "protected", "description", box=None)
        for row in rows:
            if row["valid"]:
                table.add_row(row["name"], row["target"], "yes" if row["protected"] else "no", row["description"])
            else:
                table.add_row(row["name"], "[red]invalid[/red]", "", row["error"])
        app.stdout_print(table)

    app.emit({"envs": rows}, human)
    return status
