"""`orchestrate traffic ENV [--configure]`: how the load balancer splits the traffic.

Traffic releases themselves are `orchestrate deploy --strategy blue-green|canary-traffic` and
their switch back `orchestrate rollback` (orchestrator.release.service).
"""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.errors import ExitStatus
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.session import locked_run
from orchestrator.traffic.lb import LoadBalancer, configure_lb


@click.command("traffic")
@env_argument
@click.option("--configure", is_flag=True, help="Render and apply the load balancer's config (playbooks/lb.yml).")
@lock_wait_option
@verb
def command(app: AppContext, env_name: str, configure: bool, lock_wait: float) -> ExitStatus:
    """Show how ENV's load balancer splits the traffic (with --configure: configure it first).

    The config is validated on the LB host before a reload, and reloads hand the listening
    sockets over, so configuring under load loses no request.
    """
    loaded = app.load(env_name)
    if configure:
        with locked_run(coordination_for(loaded), command="traffic", argv=["traffic", env_name, "--configure"],
                        steps=["configure"], wait=lock_wait, on_wait=app.info, env=env_name) as session, \
                session.run.step("configure") as step:
            result = configure_lb(loaded)
            step.detail.update(changed=result.changed)
    lb = LoadBalancer(loaded)
    servers = lb.stats()
    state = lb.traffic_state(servers)  # HAProxy's split, with the cache's history
    data = {"env": env_name, **state.as_dict(), "servers": servers}

    def human() -> None:
        table = Table("server", "status", "weight", "requests", "5xx", "rtime ms", box=None)
        for name, s in sorted(servers.items()):
            table.add_row(name, str(s.get("status")), str(s.get("weight")), str(s.get("lbtot")),
                          str(s.get("hrsp_5xx")), str(s.get("rtime")))
        app.stdout_print(table)
        app.stdout_print(f"active colour: {state.active or '-'}, switch back to: {state.previous or '-'}")

    app.emit(data, human)
    return ExitStatus.OK
