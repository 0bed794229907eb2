"""`orchestrate runs ENV [RUN_ID]`: the run journal of an environment, newest first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Column, Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.errors import ConfigError
from orchestrator.ids import require_run_id
from orchestrator.paths import EnvPaths
from orchestrator.runs.backend import Coordination, LocalCoordination, coordination_for
from orchestrator.runs.identity import parse_time
from orchestrator.runs.journal import JournalError
from orchestrator.runs.records import RunRecord

STATE_STYLE = {"running": "cyan", "completed": "green", "failed": "red", "interrupted": "yellow",
               "pending": "dim", "skipped": "dim"}


def state_dir_of(app: AppContext, env_name: str) -> Path:
    """The environment's state dir; an unknown environment is a UsageError listing the known ones.

    The environment file is not validated: the history of an environment stays readable while
    its file is being fixed.
    """
    if env_name not in app.project.environment_names():
        app.load(env_name)  # raises the UsageError that lists the known environments
    return EnvPaths(app.project_dir, env_name).root


def coordination_of(app: AppContext, env_name: str) -> Coordination:
    """Where the environment's runs and audit log are: shared in S3 when its Terraform state is,
    else its state dir. An environment file that does not load (being fixed) keeps the local
    history readable."""
    state_dir = state_dir_of(app, env_name)
    try:
        return coordination_for(app.load(env_name))
    except ConfigError:
        return LocalCoordination(state_dir, env_name)


def short_time(text: str | None) -> str:
    """`2026-11-23 18:15:00` (UTC) for tables; empty for None."""
    return parse_time(text).strftime("%Y-%m-%d %H:%M:%S") if text else ""


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f} s"


@click.command("runs")
@env_argument
@click.argument("run_id", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@verb
def command(app: AppContext, env_name: str, run_id: str | None, limit: int) -> None:
    """List the runs of ENV newest first, or show the steps and host transitions of RUN_ID.

    A run whose process died without finishing (SIGKILL, reboot) shows as `interrupted`;
    `orchestrate resume RUN_ID` continues it from its first step not completed.
    """
    if run_id is not None:
        require_run_id(run_id, "RUN_ID")
    coordination = coordination_of(app, env_name)
    if not coordination.has_runs():
        if run_id is not None:
            raise JournalError(f"no run {run_id}: environment {env_name} has no runs yet")
        app.emit({"env": env_name, "runs": []}, lambda: app.stdout_print(f"no runs of {env_name} yet"))
        return
    with coordination.journal(run_ids=[run_id] if run_id else (), recent=0 if run_id else limit) as journal:
        if run_id is None:
            runs = journal.runs(limit)
            app.emit({"env": env_name, "runs": [r.to_summary() for r in runs]}, lambda: _print_runs(app, runs))
            return
        run = journal.get(run_id)
        if run is None:
            raise JournalError(f"no run {run_id} in the journal of environment {env_name}",
                               hint=f"see `orchestrate runs {env_name}`")
        transitions = journal.host_transitions(run_id)
    data: dict[str, Any] = {"env": env_name, "run": run.as_dict(), "hosts": [t.as_dict() for t in transitions]}
    app.emit(data, lambda: _print_run(app, run, data["hosts"]))


def _print_runs(app: AppContext, runs: list[RunRecord]) -> None:
    if not runs:
        app.stdout_print("no runs yet")
        return
    table = Table(Column("id", no_wrap=True), Column("command", no_wrap=True), Column("state", no_wrap=True),
                  Column("started (UTC)", no_wrap=True), Column("took", no_wrap=True),
                  Column("release", overflow="fold", min_width=12), box=None)
    for run in runs:
        table.add_row(run.id, run.command, styled(run.state), short_time(run.started), _duration(run.duration),
                      run.release or "")
    app.stdout_print(table)


def _print_run(app: AppContext, run: RunRecord, hosts: list[dict[str, Any]]) -> None:
    app.stdout_print(f"run {run.id}: {' '.join(run.argv) or run.command} - {styled(run.state)}"
                     f" (by {run.user}@{run.host} pid {run.pid}, attempts {run.attempts})")
    if run.release:
        app.stdout_print(f"release {run.release}")
    if run.plan_sha256:
        app.stdout_print(f"plan sha256 {run.plan_sha256}")
    if run.error:
        app.stdout_print(f"[red]error:[/] {run.error}")
    table = Table("#", "step", "state", Column("started (UTC)", no_wrap=True), Column("duration", no_wrap=True),
                  Column("detail", overflow="fold"), box=None)
    for step in run.steps:
        detail = ", ".join(f"{k}={v}" for k, v in step.detail.items())
        table.add_row(str(step.seq), step.name, styled(step.state), short_time(step.started),
                      _duration(step.duration), detail)
    app.stdout_print(table)
    if hosts:
        moves = Table("host", "from", "to", Column("at (UTC)", no_wrap=True), "release", box=None)
        for t in hosts:
            moves.add_row(t["host"], t["from"], t["to"], short_time(t["at"]), t["release"] or "")
        app.stdout_print(moves)
