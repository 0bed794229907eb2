"""`orchestrate monitoring render|deploy|check|dashboard ENV`: Prometheus/Alertmanager configuration,
its tests, and the Grafana dashboard."""

from __future__ import annotations

import json
from pathlib import Path

import click

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.errors import ExitStatus
from orchestrator.monitoring.checks import verify_monitoring
from orchestrator.monitoring.files import deploy_monitoring, ensure_heal_token, render_monitoring


@click.group("monitoring")
def command() -> None:
    """Render and verify the monitoring configuration (rules, routing, heal policy)."""


@command.command("render")
@env_argument
@verb
def render(app: AppContext, env_name: str) -> None:
    """Write prometheus.yml, the alert rules and their tests, and alertmanager.yml for ENV.

    Scrape targets come from the environment's inventory (none before provisioning). The heal
    webhook's token file .orchestrate/ENV/heal.token is created (0600) when missing.
    """
    loaded = app.load(env_name)
    token = ensure_heal_token(loaded)
    result = render_monitoring(loaded)
    data = {"env": result.env, "directory": str(result.directory), "files": [str(p) for p in result.files],
            "app_targets": result.app_targets, "webhook_url": result.webhook_url, "token_file": str(token)}

    def human() -> None:
        for path in result.files:
            app.stdout_print(str(path))
        if not result.app_targets:
            app.info(f"no app hosts in the inventory of {result.env} yet: the service scrape job is empty")

    app.emit(data, human)


@command.command("deploy")
@env_argument
@lock_wait_option
@verb
def deploy(app: AppContext, env_name: str, lock_wait: float) -> None:
    """Render the monitoring files and apply them: node exporter on every host, Prometheus and
    Alertmanager on the monitoring host (validated there before reload)."""
    from orchestrator.runs.backend import coordination_for

    loaded = app.load(env_name)
    lock = coordination_for(loaded).lock(command=f"orchestrate monitoring deploy {env_name}", on_wait=app.info)
    lock.acquire(lock_wait)
    try:
        result = deploy_monitoring(loaded)
    finally:
        lock.release()
    app.emit(result.as_dict(), lambda: app.stdout_print(
        f"{env_name}: monitoring deployed ({result.run.summary_line() or result.run.status}, "
        f"{len(result.files.app_targets)} app targets, alerts to {result.files.webhook_url})"))


@command.command("check")
@env_argument
@verb
def check(app: AppContext, env_name: str) -> ExitStatus:
    """Run promtool (check config, check rules, test rules), amtool (check-config, routing tests)
    and the heal-policy check on ENV's monitoring configuration; exit 1 when any fails."""
    report = verify_monitoring(app.load(env_name))

    def human() -> None:
        for item in report.checks:
            mark = "[green]ok[/green]" if item.ok else "[red]FAILED[/red]"
            app.stdout_print(f"{mark}  {item.name}")
            if not item.ok and item.detail:
                app.stdout_print(item.detail)

    app.emit(report.as_dict(), human)
    return ExitStatus.OK if report.ok else ExitStatus.FAILED


@command.command("dashboard")
@env_argument
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Write the dashboard JSON to FILE (default: stdout).")
@verb
def dashboard(app: AppContext, env_name: str, output: Path | None) -> ExitStatus:
    """A Grafana dashboard of ENV: request rate, error ratio and latency per host and per colour,
    health probes, releases, alerts; deploys, rollbacks and canary steps from the journal as
    annotations. Checked before it is written (schemaVersion, unique panel ids, every query with
    promtool); exit 1 when a check fails. `monitoring deploy` also places it next to Prometheus
    (/etc/prometheus/dashboards/).
    """
    from orchestrator.fleet.inventory import fleet_hosts
    from orchestrator.monitoring.checks import verify_dashboard
    from orchestrator.monitoring.dashboard import build_dashboard, journal_events, queries

    loaded = app.load(env_name)
    board = build_dashboard(loaded, fleet_hosts(loaded), journal_events(loaded))
    checks = verify_dashboard(board)
    failed = [c for c in checks if not c.ok]
    text = json.dumps(board, indent=2) + "\n"
    if output is not None and not failed:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    if output is None:
        click.echo(text, nl=False)
    elif app.json_output:
        click.echo(json.dumps({"env": env_name, "file": str(output), "panels": len(board["panels"]),
                               "queries": len(queries(board)), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        app.stdout_print(str(output))
    for check in checks:
        app.info(f"{'[green]ok[/green]' if check.ok else '[red]FAILED[/red]'}  {check.name}")
        if not check.ok and check.detail:
            app.info(check.detail)
    return ExitStatus.FAILED if failed else ExitStatus.OK
