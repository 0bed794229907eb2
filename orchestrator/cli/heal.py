"""`orchestrate heal serve ENV`: the Alertmanager webhook receiver that remediates alerts."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from rich.markup import escape

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.errors import UsageError
from orchestrator.heal.remediate import build_server, clear_state, write_state


@click.group("heal")
def command() -> None:
    """Self-healing: receive Alertmanager's webhooks and remediate by policy."""


@command.command("serve")
@env_argument
@click.option("--listen", metavar="HOST:PORT", default=None,
              help="Address to serve on (loopback or the fleet's bridge address only); "
                   "default: healing.listen, plus the bridge address of a local fleet.")
@click.option("--once-for", "once_for", type=float, default=None, metavar="SECONDS",
              help="Serve for SECONDS, then finish the queued alerts, print a summary and exit.")
@verb
def serve(app: AppContext, env_name: str, listen: str | None, once_for: float | None) -> None:
    """Serve the heal webhook of ENV until interrupted (SIGINT/SIGTERM) or --once-for elapses.

    Each firing alert is decided by policy (the remediation of the alert's rule, throttle per host
    and alert, circuit breaker, environment lock), then on the present once the lock is held (the
    alert still fires, no run moved its host meanwhile, a rollback goes no further back than the
    release the last finished run left serving); every decision goes to the environment's audit log.
    """
    if once_for is not None and once_for <= 0:
        raise UsageError(f"--once-for {once_for:g}: expected a positive number of seconds")
    loaded = app.load(env_name)
    server = build_server(loaded, listen=listen, log=lambda message: app.info(escape(message)))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    addresses = server.start()
    previous = signal.signal(signal.SIGTERM, on_signal)
    write_state(loaded, addresses)
    try:
        for host, port in addresses:
            shown = f"[{host}]" if ":" in host else host
            app.info(f"heal server for {loaded.name} listening on http://{shown}:{port}/alerts")
        for host, port in server.waiting_addresses:
            app.info(f"{host}:{port}: the fleet's bridge is not up yet; listening there once it is")
        try:
            stop.wait(once_for)
        except KeyboardInterrupt:
            app.info("stopping")
    finally:
        served = server.addresses
        server.stop()
        clear_state(loaded)
        signal.signal(signal.SIGTERM, previous)
        for resource in (server.audit, server.present):
            close = getattr(resource, "close", None)
            if callable(close):
                close()
    summary = {"env": loaded.name, "listen": [f"{h}:{p}" for h, p in served], **server.summary()}

    def human() -> None:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items())) or "no alerts"
        app.stdout_print(f"{loaded.name}: {counts}")

    app.emit(summary, human)
