"""`orchestrate render ENV`: write the environment's Terraform root under .orchestrate/ENV/."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.fleet.render import render_environment


@click.command("render")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> None:
    """Render the Terraform root module and its variables for ENV; print the paths."""
    result = render_environment(app.load(env_name))

    def human() -> None:
        for path in result.files:
            app.stdout_print(str(path))

    app.emit({"env": result.env, "terraform_dir": str(result.terraform_dir),
              "files": [str(p) for p in result.files]}, human)
