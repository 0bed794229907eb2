"""`orchestrate rollback ENV [--to RELEASE_ID]`: switch the app hosts back, health-gated."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, confirm_protected, env_argument, lock_wait_option, verb
from orchestrator.cli._release import release_service, render_outcome
from orchestrator.errors import ExitStatus
from orchestrator.ids import require_release_id
from orchestrator.release.service import RollbackCommand


@click.command("rollback")
@env_argument
@click.option("--to", "to", default=None, metavar="RELEASE_ID",
              help="Release to switch to (default: each host's previous release).")
@click.option("--limit", "limit", multiple=True, metavar="HOSTS",
              help="Only these app hosts (names or globs, comma-separated or repeated), host by host.")
@click.option("--yes", is_flag=True, help="Roll back a protected environment without asking.")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, to: str | None, limit: tuple[str, ...], yes: bool,
            lock_wait: float) -> ExitStatus:
    """Switch ENV's app hosts to their previous release (or --to RELEASE_ID) behind the health gate.

    After a blue-green or canary-by-weight release, the traffic goes back to the colour that
    served before (one weight change). Nothing is copied: the release must still be on the hosts.
    Exit 0 done, 3 the target failed its gate and the hosts are back where they were, 1 any other
    failure.
    """
    loaded = app.load(env_name)
    if to is not None:
        require_release_id(to, "--to")
    confirm_protected(app, loaded, yes, "roll back")
    argv = ["rollback", env_name, *(["--to", to] if to else []), *(f"--limit={pattern}" for pattern in limit)]
    outcome = release_service(app, loaded).rollback(RollbackCommand(to=to, argv=argv, lock_wait=lock_wait,
                                                                    limit=limit))
    app.emit(outcome.as_dict(), lambda: render_outcome(app, outcome))
    return ExitStatus.OK
