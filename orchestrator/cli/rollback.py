"""`orchestrate rollback ENV [--to RELEASE_ID]`: switch the app hosts back, health-gated."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.cli.deploy import finish, lock_wait_option, progress
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.release.artifact import is_release_id
from orchestrator.release.hosts import rollback
from orchestrator.release.results import ReleaseRun
from orchestrator.release.transitions import HostTransitions
from orchestrator.runs.session import locked_run


@click.command("rollback")
@env_argument
@click.option("--to", "to", default=None, metavar="RELEASE_ID",
              help="Release to switch to (default: each host's previous release).")
@click.option("--yes", is_flag=True, help="Roll back a protected environment without asking.")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, to: str | None, yes: bool, lock_wait: float) -> ExitStatus:
    """Switch ENV's app hosts to their previous release (or --to RELEASE_ID) behind the health gate.

    Nothing is copied: the release must still be on the hosts. Exit 0 done, 3 the target failed
    its gate and the hosts are back where they were, 1 any other failure.
    """
    loaded = app.load(env_name)
    if to is not None and not is_release_id(to):
        raise UsageError(f"--to {to!r} is not a release id such as 0.2.0-0123456789ab")
    if loaded.env.protected and not yes:
        if not app.interactive:
            raise UsageError(f"{env_name} is protected: pass --yes to roll back without a terminal")
        click.confirm(f"Roll back protected environment {env_name}?", abort=True, err=True)
    from orchestrator.release.traffic import switch_back_pending

    if to is None and switch_back_pending(loaded):
        from orchestrator.cli.traffic import run_switch_back

        app.info(f"switching {env_name}'s traffic back to the previous colour")
        return run_switch_back(app, loaded, lock_wait)
    app.info(f"rolling back {env_name} to {to or 'the previous release'}")
    events = progress(app)
    argv = ["rollback", env_name, *(["--to", to] if to else [])]

    def run() -> ReleaseRun:
        with locked_run(loaded.state_dir, command="rollback", argv=argv, steps=["rollback"], wait=lock_wait,
                        on_wait=app.info, env=env_name) as session, session.run.step("rollback") as step:
            # each app host idle -> rolled_back (or failed) in the journal, as it happens
            result = rollback(loaded, to, on_event=events, transitions=HostTransitions.for_run(session.run))
            step.detail.update(release=result.target, state=result.state, changed=result.changed)
            if result.target:
                session.run.set_release(result.target)
            return result

    return finish(app, run)
