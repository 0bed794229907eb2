"""`orchestrate audit ENV`: the append-only audit log of an environment, newest first."""

from __future__ import annotations

from datetime import datetime, timedelta

import click
from rich.table import Column, Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.cli.runs import coordination_of, short_time
from orchestrator.config.types import parse_duration
from orchestrator.errors import UsageError
from orchestrator.runs.audit import AuditEntry, verify_state_dir
from orchestrator.runs.backend import LocalCoordination
from orchestrator.runs.identity import parse_time, utcnow


def parse_since(text: str) -> datetime:
    """`--since`: a duration back from now (`90m`, `2d`) or an ISO 8601 time (UTC if no zone)."""
    try:
        return utcnow() - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise UsageError(f"--since: {text!r} is neither a duration (30m, 2d) nor a time (2026-11-23T18:00)") from None


@click.command("audit")
@env_argument
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="How many entries.")
@click.option("--since", "since_text", metavar="WHEN", help="Only entries since a duration ago (2h) or a time.")
@click.option("--verify", is_flag=True, help="Check the hash chain of the whole log (exit 1 if tampered).")
@verb
def command(app: AppContext, env_name: str, limit: int, since_text: str | None, verify: bool) -> None:
    """Show who did what to ENV, when, and how it ended: runs, lock takeovers, heal decisions."""
    coordination = coordination_of(app, env_name)
    since = parse_since(since_text) if since_text else None
    if isinstance(coordination, LocalCoordination) and verify:
        # the head file beside the log: a log cut short or removed fails, not only a changed entry
        verified: int | None = verify_state_dir(coordination.state_dir, env=env_name)
    else:
        verified = None
    if not coordination.has_audit():
        entries: list[AuditEntry] = []
        if verify and verified is None:
            verified = 0
    else:
        log = coordination.audit()
        try:
            if verify and verified is None:
                verified = log.verify()
            entries = log.entries(limit, since=since)
        finally:
            log.close()
    data: dict[str, object] = {"env": env_name, "entries": [e.as_dict() for e in entries]}
    if verified is not None:
        data["verified"] = verified

    def human() -> None:
        if not entries:
            app.stdout_print(f"no audit entries for {env_name}")
        else:
            table = Table(Column("at (UTC)", no_wrap=True), Column("who", overflow="fold"),
                          Column("command", overflow="fold"), Column("outcome", overflow="fold"),
                          Column("took", no_wrap=True), Column("details", overflow="fold"), box=None)
            for e in entries:
                facts = {"run": e.run_id, "release": e.release, "plan": e.plan_sha256 and e.plan_sha256[:12]}
                facts.update({k: v for k, v in e.details.items() if k != "argv"})
                details = ", ".join(f"{k}={v}" for k, v in facts.items() if v not in (None, "", {}, []))
                table.add_row(short_time(e.at), f"{e.user}@{e.host}", e.command, e.outcome,
                              "" if e.duration is None else f"{e.duration:.1f} s", details)
            app.stdout_print(table)
        if verified is not None:
            app.stdout_print(f"hash chain intact ({verified} entries)")

    app.emit(data, human)
