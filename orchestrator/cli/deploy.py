"""`orchestrate deploy ENV --release PATH`: ship a release to the app hosts, health-gated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.config.secrets import load_secrets
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.fleet.inventory import app_hosts
from orchestrator.release.backup import create_backup
from orchestrator.release.hosts import DeployRequest, deploy
from orchestrator.release.results import GateFailedRestored, ReleaseRun, ReleaseRunError
from orchestrator.release.strategies import host_strategy, is_traffic, note_host_deploy, resolve_strategy
from orchestrator.release.transitions import HostTransitions
from orchestrator.runs.session import locked_run
from orchestrator.tools.ansible import HostEvent

lock_wait_option = click.option(
    "--lock-wait", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
    help="Wait this long for the environment lock (exit 75 when it stays busy).")

_STYLE = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red"}


def progress(app: AppContext) -> Callable[[HostEvent], None] | None:
    """A live per-host line for every task outcome on stderr; nothing under --json."""
    if app.json_output:
        return None

    def show(event: HostEvent) -> None:
        if event.status == "skipped":
            return
        style = _STYLE.get(event.status, "white")
        detail = f" [dim]{event.message}[/dim]" if event.message else ""
        app.stderr.print(f"  {event.host:<14} [{style}]{event.status:<11}[/{style}] {event.task}{detail}")

    return show


def render_run(app: AppContext, run: ReleaseRun) -> None:
    """Table of hosts (release before -> after) and the run summary, on stdout."""
    table = Table("host", "address", "before", "after", "switched", "healthy", box=None)
    for host in run.hosts:
        healthy = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[host.healthy]
        table.add_row(host.name, host.address, host.release_before or "-", host.release or "-",
                      "yes" if host.switched else "no", healthy)
    app.stdout_print(table)
    app.stdout_print(f"{run.action} {run.state}: {run.target or '-'}, {run.changed} changed, "
                     f"run {run.run_id} ({run.run.duration:.1f} s)")
    if run.restored_hosts:
        app.stdout_print("restored: " + ", ".join(f"{h} -> {r}" for h, r in sorted(run.restored_hosts.items())))


def finish(app: AppContext, run_call: Callable[[], ReleaseRun]) -> ExitStatus:
    """Run a deploy or rollback, emit its result (also after a failure) and map it to an exit status."""
    try:
        run = run_call()
    except (GateFailedRestored, ReleaseRunError) as exc:
        status = ExitStatus.ROLLED_BACK if isinstance(exc, GateFailedRestored) else ExitStatus.FAILED
        failed_run, message, hint = exc.run, exc.message, exc.hint
        app.emit({**failed_run.as_dict(), "error": message, "exit_code": int(status)},
                 lambda: render_run(app, failed_run))
        click.echo(f"error: {message}", err=True)
        if hint:
            click.echo(hint, err=True)
        return status
    app.emit(run.as_dict(), lambda: render_run(app, run))
    return ExitStatus.OK


@click.command("deploy")
@env_argument
@click.option("--release", "release_path", required=True, type=click.Path(path_type=Path),
              help="A built binary, or a cargo project directory (tested and built first).")
@click.option("--strategy", type=click.Choice(["rolling", "canary", "canary-hosts", "canary-traffic", "blue-green"]),
              default=None,
              help="Rollout strategy (default: the environment's rollout.strategy). canary: by traffic weight "
                   "when ENV has a load balancer (as canary-traffic), else canary hosts first (as canary-hosts); "
                   "blue-green and canary-traffic move traffic on the load balancer.")
@click.option("--yes", is_flag=True, help="Deploy to a protected environment without asking.")
@lock_wait_option
@click.option("--skip-backup", is_flag=True, help="Do not back up the app hosts first (default: back up).")
@click.option("--stock-ansible", is_flag=True, hidden=True,
              help="Stock Ansible settings instead of the tuned ones (benchmarks).")
@verb
def command(app: AppContext, env_name: str, release_path: Path, strategy: str | None, yes: bool,
            lock_wait: float, skip_backup: bool, stock_ansible: bool) -> ExitStatus:
    """Deploy a release to ENV's app hosts with a health gate on every host.

    A host whose gate fails goes back to its previous release by itself; the rollout stops and
    every host switched in this run goes back too. Exit 0 deployed (or already current),
    3 gate failed and the previous release is restored and healthy, 1 any other failure.
    """
    loaded = app.load(env_name)
    if loaded.env.protected and not yes:
        if not app.interactive:
            raise UsageError(f"{env_name} is protected: pass --yes to deploy without a terminal")
        click.confirm(f"Deploy {release_path} to protected environment {env_name}?", abort=True, err=True)
    app_hosts(loaded)  # no inventory yet: say so before asking for a vault password
    ran = resolve_strategy(loaded, strategy)  # `canary`: by traffic weight when ENV has an LB host
    secrets = load_secrets(loaded, (lambda: click.prompt("Vault password", hide_input=True, err=True))
                           if app.interactive else None)
    if is_traffic(ran):
        from orchestrator.cli.traffic import run_traffic_release

        return run_traffic_release(app, loaded, release_path, ran, secrets, lock_wait, tuned=not stock_ansible,
                                   requested=strategy or loaded.env.rollout.strategy, skip_backup=skip_backup)
    request = DeployRequest(
        release_path=release_path,
        strategy=host_strategy(ran),
        tuned=not stock_ansible,
        secret_vars=secrets,
    )
    app.info(f"deploying {release_path} to {env_name} ({ran})")
    events = progress(app)

    def run() -> ReleaseRun:
        # The environment lock keeps backups, restores, heals and other deploys off the hosts
        # meanwhile; the journal lists the run in `orchestrate runs`.
        with locked_run(loaded.state_dir, command="deploy", argv=["deploy", env_name, "--release", str(release_path)],
                        steps=["deploy"], wait=lock_wait, on_wait=app.info, env=env_name) as session, \
                session.run.step("deploy") as step:

            # Each app host's moves (backed_up -> staged -> switched -> verified, or failed ->
            # rolled_back) go into the journal as they happen: `orchestrate runs ENV RUN_ID`.
            # Without a backup the state machine cannot stage a host, so none are recorded then.
            transitions = None if skip_backup else HostTransitions.for_run(session.run)

            def backup_first() -> None:
                # after the release was accepted, before any host changes: data, release id, config
                app.info("backing up the app hosts before the deploy")
                backup = create_backup(loaded, on_event=events)
                step.update(backup=backup.id)
                if transitions is not None:
                    transitions.backed_up(backup.id, [(h.host, h.release_id) for h in backup.hosts])

            step.update(strategy=ran)
            if skip_backup:
                step.update(host_transitions="not recorded: --skip-backup (a host is staged only once backed up)")
            try:
                result = deploy(loaded, request, on_event=events,
                                on_output=(lambda line: app.info(f"  [dim]{line}[/dim]")) if events else None,
                                before_ship=None if skip_backup else backup_first, transitions=transitions)
            except (GateFailedRestored, ReleaseRunError) as exc:
                exc.run.strategy = ran  # which canary ran, in the JSON too
                raise
            result.strategy = ran
            note_host_deploy(loaded, result.target)
            step.detail.update(release=result.target, state=result.state, changed=result.changed)
            if result.target:
                session.run.set_release(result.target)
            return result

    return finish(app, run)
