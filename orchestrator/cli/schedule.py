"""`orchestrate schedule ENV`: print or install the cron line for unattended rollouts."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.schedule import CRON_DIR, DEFAULT_LOCK_WAIT, build_entry, install, uninstall


@click.command("schedule")
@env_argument
@click.option("--cron", "expression", metavar="EXPR", help="Cron expression (default: the env's schedule.cron).")
@click.option("--release", metavar="PATH", help="Binary or cargo project to roll out (default: schedule.release).")
@click.option("--install", "do_install", is_flag=True, help=f"Write the line to {CRON_DIR}/ instead of printing it.")
@click.option("--remove", is_flag=True, help="Remove the installed line.")
@click.option("--yes", is_flag=True, help="Required for protected environments; written into the line.")
@click.option("--lock-wait", type=click.IntRange(min=0), default=DEFAULT_LOCK_WAIT, show_default=True,
              help="Seconds a scheduled run waits for the environment lock.")
@click.option("--cron-dir", type=click.Path(file_okay=False, path_type=Path), default=CRON_DIR, hidden=True)
@verb
def command(app: AppContext, env_name: str, expression: str | None, release: str | None, do_install: bool,
            remove: bool, yes: bool, lock_wait: int, cron_dir: Path) -> None:
    """Print (or --install) the cron line that runs `orchestrate up ENV` unattended."""
    entry = build_entry(app.load(env_name), expression=expression, release=release, yes=yes, lock_wait=lock_wait)
    installed: str | None = None
    removed = False
    if remove:
        removed = uninstall(entry, cron_dir)
    elif do_install:
        installed = str(install(entry, cron_dir))

    def human() -> None:
        if remove:
            app.stdout_print(f"removed {cron_dir / entry.file_name}" if removed else "no installed line")
        elif installed:
            app.stdout_print(f"installed {installed}:")
            app.stdout_print(entry.line)
        else:
            app.stdout_print(entry.line)

    app.emit({"env": entry.env, "cron": entry.expression, "line": entry.line, "command": entry.argv,
              "log": str(entry.log_path), "installed": installed, "removed": removed}, human)
