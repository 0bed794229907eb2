"""`orchestrate traffic ENV`: configure the load balancer or show its split; the traffic release runners.

`orchestrate deploy ENV --strategy blue-green|canary-traffic` (and `--strategy canary` when ENV has a
load-balancer host) and `orchestrate rollback ENV` (after such a release) run through
`run_traffic_release` and `run_switch_back` below.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.cli.deploy import lock_wait_option
from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import ExitStatus
from orchestrator.release.backup import create_backup
from orchestrator.release.hosts import DeployRequest
from orchestrator.release.results import GateFailedRestored, ReleaseRunError
from orchestrator.release.strategies import TrafficStrategy
from orchestrator.release.traffic import TrafficGateFailed, TrafficRelease, TrafficRequest, switch_back, traffic_release
from orchestrator.release.transitions import HostTransitions
from orchestrator.runs.session import locked_run
from orchestrator.traffic.gates import GateDecision
from orchestrator.traffic.lb import LoadBalancer, configure_lb
from orchestrator.traffic.state import read_state


def _render(app: AppContext, result: TrafficRelease) -> None:
    table = Table("step %", "go", "requests", "failed", "error ratio", "latency ms", "reason", box=None)
    for d in result.decisions:
        table.add_row(str(d.step), "yes" if d.go else "[red]no[/red]", str(d.requests), str(d.failed),
                      f"{d.error_ratio:.3f}", f"{d.latency_ms:.0f}", d.reason)
    if result.decisions:
        app.stdout_print(table)
    app.stdout_print(f"{result.strategy} {result.state}: traffic on {result.active} "
                     f"({result.release or '-'}), switch {result.switch_seconds:.3f} s")


def run_traffic_release(app: AppContext, loaded: LoadedEnvironment, release_path: Path,
                        strategy: TrafficStrategy, secrets: Mapping[str, Any],
                        lock_wait: float, *, tuned: bool = True, requested: str | None = None,
                        skip_backup: bool = False) -> ExitStatus:
    """`orchestrate deploy --strategy blue-green|canary-traffic`: journalled, locked, audited.

    `requested`: the strategy as asked for (`canary` resolves to canary-traffic behind an LB);
    `strategy` in the output and the journal is the one that ran. The app hosts are backed up
    first (as for a host-level deploy) unless `skip_backup`.
    """
    deploy_request = DeployRequest(release_path=release_path, tuned=tuned, secret_vars=secrets)
    asked = {"requested_strategy": requested or strategy}
    argv = ["deploy", loaded.name, "--release", str(release_path), "--strategy", requested or strategy]
    try:
        with locked_run(loaded.state_dir, command="deploy", argv=argv, steps=["deploy"], wait=lock_wait,
                        on_wait=app.info, env=loaded.name) as session, session.run.step("deploy") as step:
            decisions: list[dict[str, Any]] = []
            step.update(strategy=strategy, **asked)
            # the idle colour's hosts move through the journal's state machine from backed_up
            transitions = None if skip_backup else HostTransitions.for_run(session.run)
            if transitions is not None:
                app.info("backing up the app hosts before the release")
                backup = create_backup(loaded)
                step.update(backup=backup.id)
                transitions.backed_up(backup.id, [(h.host, h.release_id) for h in backup.hosts])
            else:
                step.update(host_transitions="not recorded: --skip-backup (a host is staged only once backed up)")
            request = TrafficRequest(deploy=deploy_request, strategy=strategy, transitions=transitions)

            def record(decision: GateDecision) -> None:
                decisions.append(decision.as_dict())
                step.update(strategy=strategy, decisions=decisions)
                app.info(f"  gate at {decision.step}%: {'go' if decision.go else 'roll back'} "
                         f"({decision.requests} requests, {decision.failed} failed, {decision.reason}; "
                         f"{decision.source})")

            result = traffic_release(loaded, request, on_decision=record, run_id=session.run.id)
            step.detail.update(release=result.release, state=result.state, active=result.active,
                               switch_seconds=round(result.switch_seconds, 3))
            if result.release:
                session.run.set_release(result.release)
    except TrafficGateFailed as exc:
        failed = exc.result
        app.emit({**failed.as_dict(), **asked, "error": exc.message, "exit_code": int(exc.exit_status)},
                 lambda: _render(app, failed))
        click.echo(f"error: {exc.message}", err=True)
        return exc.exit_status
    except (GateFailedRestored, ReleaseRunError) as exc:
        status = ExitStatus.ROLLED_BACK if isinstance(exc, GateFailedRestored) else ExitStatus.FAILED
        app.emit({**exc.run.as_dict(), "strategy": strategy, **asked, "error": exc.message,
                  "exit_code": int(status)})
        click.echo(f"error: {exc.message}", err=True)
        return status
    app.emit({**result.as_dict(), **asked}, lambda: _render(app, result))
    return ExitStatus.OK


def run_switch_back(app: AppContext, loaded: LoadedEnvironment, lock_wait: float) -> ExitStatus:
    """`orchestrate rollback ENV` after a traffic release: all traffic back to the previous colour."""
    with locked_run(loaded.state_dir, command="rollback", argv=["rollback", loaded.name], steps=["rollback"],
                    wait=lock_wait, on_wait=app.info, env=loaded.name) as session, \
            session.run.step("rollback") as step:
        result = switch_back(loaded)
        step.detail.update(strategy="switch-back", active=result.active, release=result.release,
                           switch_seconds=round(result.switch_seconds, 3))
        if result.release:
            session.run.set_release(result.release)
    app.emit(result.as_dict(), lambda: _render(app, result))
    return ExitStatus.OK


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
        with locked_run(loaded.state_dir, command="traffic", argv=["traffic", env_name, "--configure"],
                        steps=["configure"], wait=lock_wait, on_wait=app.info, env=env_name) as session, \
                session.run.step("configure") as step:
            result = configure_lb(loaded)
            step.detail.update(changed=result.changed)
    servers = LoadBalancer(loaded).stats()
    state = read_state(loaded)
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
