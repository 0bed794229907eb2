"""`orchestrate validate ENV`: check an environment file without touching anything."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, verb


@click.command("validate")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> None:
    """Validate inventories/ENV/environment.yml (exit 2 naming file:line: field on errors)."""
    loaded = app.load(env_name)
    env = loaded.env
    summary = {
        "env": env.name,
        "valid": True,
        "file": str(loaded.path.relative_to(app.project_dir))
        if loaded.path.is_relative_to(app.project_dir)
        else str(loaded.path),
        "target": env.target,
        "protected": env.protected,
        "service": env.service.name,
        "strategy": env.rollout.strategy,
        "app_hosts": env.terraform.vars.app_count,
    }
    app.emit(summary, lambda: app.stdout_print(f"{summary['file']}: ok ({env.target}, {env.rollout.strategy}, "
                                                f"{summary['app_hosts']} app hosts)"))
