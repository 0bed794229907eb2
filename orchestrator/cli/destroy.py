"""`orchestrate destroy ENV [--yes]`: destroy every resource of the environment."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.cli._terraform import ProgressPrinter
from orchestrator.errors import ExitStatus
from orchestrator.fleet.provision import destroy, needs_confirmation
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.session import locked_run


@click.command("destroy")
@env_argument
@click.option("--yes", "-y", is_flag=True, help="Destroy without asking (required without a terminal).")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, yes: bool, lock_wait: float) -> ExitStatus:
    """Destroy ENV's infrastructure and remove its inventory.

    Every environment asks for confirmation on a terminal; without one (or under --json)
    it refuses (exit 2, nothing destroyed) unless --yes is given.
    """
    loaded = app.load(env_name)
    ask = needs_confirmation(loaded, action="destroy", yes=yes, interactive=app.interactive, always=True)
    if ask and not click.confirm(f"destroy every resource of {env_name}?", default=False, err=True):
        app.emit({"env": env_name, "destroyed": 0, "confirmed": False},
                 lambda: app.stdout_print(f"{env_name}: not confirmed; nothing destroyed"))
        return ExitStatus.FAILED
    app.info(f"destroying {env_name} ({loaded.env.target})…")
    with locked_run(coordination_for(loaded), command="destroy", argv=["destroy", env_name], steps=["destroy"],
                    wait=lock_wait, on_wait=app.info, env=env_name) as session, \
            session.run.step("destroy") as step:
        outcome = destroy(loaded, on_progress=ProgressPrinter(app))
        step.detail.update(destroyed=outcome.destroyed)
    app.emit(outcome.as_dict(), lambda: app.stdout_print(f"{env_name}: destroyed {outcome.destroyed} resources"))
    return ExitStatus.OK
