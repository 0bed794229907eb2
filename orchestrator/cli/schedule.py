"""`orchestrate schedule ENV`: print or install the cron line for unattended rollouts."""

from __future__ import annotations

import os
from pathlib import Path

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.pipeline.schedule import (
    CRON_DIR,
    DEFAULT_LOCK_WAIT,
    build_entry,
    install,
    installed_file,
    password_file_option,
    uninstall_file,
)


@click.command("schedule")
@env_argument
@click.option("--cron", "expression", metavar="EXPR", help="Cron expression (default: the env's schedule.cron).")
@click.option("--release", metavar="PATH", help="Binary or cargo project to roll out (default: schedule.release).")
@click.option("--install", "do_install", is_flag=True, help=f"Write the line to {CRON_DIR}/ instead of printing it.")
@click.option("--remove", is_flag=True, help="Remove the installed line.")
@click.option("--yes", is_flag=True, help="Required for protected environments; written into the line.")
@click.option("--lock-wait", type=click.IntRange(min=0), default=DEFAULT_LOCK_WAIT, show_default=True,
              help="Seconds a scheduled run waits for the environment lock.")
@click.option("--vault-password-file", "vault_password_file", type=click.Path(path_type=Path), default=None,
              metavar="FILE",
              help="Vault password file the scheduled run reads (its path goes into the line, never the "
                   "password; default: $ORCHESTRATE_VAULT_PASSWORD_FILE). Required when ENV has secrets.yml.")
@click.option("--cron-dir", type=click.Path(file_okay=False, path_type=Path), default=CRON_DIR, hidden=True)
@verb
def command(app: AppContext, env_name: str, expression: str | None, release: str | None, do_install: bool,
            remove: bool, yes: bool, lock_wait: int, vault_password_file: Path | None, cron_dir: Path) -> None:
    """Print (or --install) the cron line that runs `orchestrate up ENV` unattended."""
    loaded = app.load(env_name)
    if remove:
        target = installed_file(loaded, cron_dir)
        removed = uninstall_file(target)
        app.emit({"env": env_name, "file": str(target), "installed": None, "removed": removed},
                 lambda: app.stdout_print(f"removed {target}" if removed else "no installed line"))
        return
    password_file, source = password_file_option(vault_password_file, os.environ)
    entry = build_entry(loaded, expression=expression, release=release, yes=yes, lock_wait=lock_wait,
                        vault_password_file=password_file, vault_password_source=source)
    installed = str(install(entry, cron_dir)) if do_install else None

    def human() -> None:
        if installed:
            app.stdout_print(f"installed {installed}:")
        app.stdout_print(entry.line)

    app.emit({"env": entry.env, "cron": entry.expression, "line": entry.line, "command": entry.argv,
              "environment": entry.environment, "log": str(entry.log_path), "file": str(cron_dir / entry.file_name),
              "installed": installed, "removed": False}, human)
