"""`orchestrate report ENV [--since 30d] [--export]`: delivery figures from the run journal."""

from __future__ import annotations

from datetime import timedelta

import click
from rich.table import Column, Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.cli.runs import state_dir_of
from orchestrator.config.types import parse_duration
from orchestrator.errors import UsageError
from orchestrator.runs.identity import utcnow
from orchestrator.runs.journal import JOURNAL_FILE, Journal
from orchestrator.runs.report import DeliveryReport, Figures, compute_report, delivery_report


def human_seconds(seconds: float | None) -> str:
    """`8.1 s`, `3m 02s`, `2h 05m`, `1d 03h`; `-` for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@click.command("report")
@env_argument
@click.option("--since", "since_text", default="30d", show_default=True, metavar="DURATION",
              help="The window: runs started this long ago or later (such as 12h, 7d, 30d).")
@click.option("--export", is_flag=True,
              help="Also write the metrics for Prometheus on the monitoring host now (every release does it too).")
@verb
def command(app: AppContext, env_name: str, since_text: str, export: bool) -> None:
    """Delivery figures of ENV from its run journal: deployment frequency, lead time from build to
    serving, change failure rate (deploys that failed their gate or were rolled back, by an operator
    or the heal server), time to restore, per strategy, and the slowest steps with their share of
    the total time.
    """
    try:
        since = timedelta(seconds=parse_duration(since_text))
    except ValueError:
        raise UsageError(f"--since {since_text!r} is not a duration such as 12h, 7d, 30d") from None
    state_dir = state_dir_of(app, env_name)
    published = None
    if export:
        from orchestrator.monitoring.delivery import publish_delivery_metrics

        loaded = app.load(env_name)
        published = publish_delivery_metrics(loaded)
        if published is None:
            raise UsageError(f"{env_name} has no monitoring host (or no runs yet): nothing to export to")
    if (state_dir / JOURNAL_FILE).exists():
        with Journal.open(state_dir, env=env_name) as journal:
            report = delivery_report(journal, since=since)
    else:
        report = compute_report(env_name, [], lambda run_id: [], since=utcnow() - since)
    data = report.as_dict()
    if published is not None:
        data["exported"] = published.as_dict()
    app.emit(data, lambda: _print(app, env_name, since_text, report))


def _row(table: Table, label: str, figures: Figures) -> None:
    table.add_row(label, str(figures.deploys), f"{figures.per_day:.2f}", str(figures.failed_changes),
                  _percent(figures.change_failure_rate), human_seconds(figures.lead_time.median),
                  human_seconds(figures.time_to_restore.median), human_seconds(figures.duration.median))


def _print(app: AppContext, env_name: str, since_text: str, report: DeliveryReport) -> None:
    if report.runs == 0:
        app.stdout_print(f"no runs of {env_name} in the last {since_text}")
        return
    overall = report.overall
    app.stdout_print(
        f"{env_name}: {overall.deploys} deployments in the last {since_text} ({overall.per_day:.2f} a day), "
        f"{overall.failed_changes} failed changes ({_percent(overall.change_failure_rate)}: "
        f"{overall.gate_failed} failed gates, {overall.rolled_back} rollbacks, "
        f"{overall.heal_rolled_back} heal rollbacks), {overall.errors} errors")
    table = Table("strategy", "deploys", "per day", "failed", "failure rate", "lead time", "time to restore",
                  "deploy took", box=None)
    _row(table, "all", overall)
    for figures in report.by_strategy:
        _row(table, figures.strategy or "?", figures)
    app.stdout_print(table)
    app.stdout_print("(lead time, time to restore and deploy duration: medians)")
    steps = Table(Column("slowest steps", no_wrap=True), "share", "total", "runs", "mean", "max", box=None)
    for step in report.slowest_steps():
        steps.add_row(step.name, f"{step.share:.1%}", human_seconds(step.seconds), str(step.runs),
                      human_seconds(step.mean), human_seconds(step.max))
    app.stdout_print(steps)
    app.stdout_print(f"({report.runs} runs, {human_seconds(report.step_seconds)} in steps)")
