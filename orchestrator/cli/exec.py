"""`orchestrate exec ENV [HOST...|--group G] -- CMD ARGS...`: a command on hosts, in parallel."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, complete_host, confirm_protected, env_argument, lock_wait_option, verb
from orchestrator.cli._hosts import DashDashCommand, host_styles, prefixed, remote_argv
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.fleet.adhoc import DEFAULT_TIMEOUT, ExecOutcome, ExecRequest, run_exec


def render(app: AppContext, outcome: ExecOutcome) -> None:
    """Each host's output lines prefixed with the host (stdout; its stderr lines on stderr, dimmed),
    then one line per host with its exit code."""
    names = [h.host for h in outcome.hosts]
    width = max((len(n) for n in names), default=0)
    styles = host_styles(names)
    for run in outcome.hosts:
        for line in run.stdout.splitlines():
            app.stdout_print(prefixed(run.host, width, line, styles[run.host]))
        for line in run.stderr.splitlines():
            app.stderr.print(prefixed(run.host, width, line, styles[run.host], dim=True))
    for run in outcome.hosts:
        if run.exit_code is None or run.error:
            state = f"[red]{run.error or 'did not run'}[/red]"
        else:
            state = "[green]exit 0[/green]" if run.ok else f"[red]exit {run.exit_code}[/red]"
        app.info(f"{run.host:<{width}} {state} ({run.duration:.2f} s)")


@click.command("exec", cls=DashDashCommand)
@env_argument
@click.argument("hosts", nargs=-1, metavar="[HOST...]", shell_complete=complete_host)
@click.option("--group", "group", type=click.Choice(["app", "lb", "monitoring"]), default=None,
              help="Every host of this group (default: the app hosts, when no HOST is named).")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              metavar="SECONDS", help="Stop the command on a host after this long.")
@click.option("--yes", is_flag=True, help="Run on a protected environment without asking.")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, hosts: tuple[str, ...], group: str | None, timeout: float, yes: bool,
            lock_wait: float) -> ExitStatus:
    """Run CMD ARGS... on ENV's hosts (names or globs, or --group) in parallel, after `--`.

    The command is quoted word by word for the remote shell; every host is reached through the
    address guard with the project's key. The run takes the environment lock and is journalled
    and audited (who, what, where). Exit 0 when it exited 0 on every host, 1 otherwise (the
    failed hosts are named).
    """
    argv = remote_argv(click.get_current_context())
    if not argv:
        raise UsageError("give the command after `--`: orchestrate exec ENV [HOST...] -- CMD ARGS...")
    loaded = app.load(env_name)
    confirm_protected(app, loaded, yes, f"run {argv[0]}")
    app.result_renderer = lambda result: render(app, result) if isinstance(result, ExecOutcome) else None
    outcome = run_exec(loaded, ExecRequest(command=tuple(argv), hosts=hosts, group=group, timeout=timeout,
                                           lock_wait=lock_wait), info=app.info)
    app.emit(outcome.as_dict(), lambda: render(app, outcome))
    return ExitStatus.OK
