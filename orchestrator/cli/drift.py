"""`orchestrate drift ENV`: refresh-only plan; exit 4 when resources changed behind Terraform's back."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.cli._terraform import ProgressPrinter
from orchestrator.errors import ExitStatus
from orchestrator.fleet.provision import drift
from orchestrator.notify.webhooks import notify_drift


@click.command("drift")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> ExitStatus:
    """List resources of ENV whose real state differs from Terraform's state, with the attributes.

    Nothing is changed. Exit 0 when there is no drift, 4 when there is.
    """
    loaded = app.load(env_name)
    app.info(f"checking {env_name} for drift…")
    outcome = drift(loaded, on_progress=ProgressPrinter(app))
    for delivery in notify_drift(loaded, [item.address for item in outcome.drift]):
        if not delivery.ok:
            app.info(f"notifying {delivery.target} of the drift failed: {delivery.error} (kept in the audit log)")

    def human() -> None:
        if not outcome.drift:
            app.stdout_print(f"{env_name}: no drift")
        for item in outcome.drift:
            attributes = ", ".join(item.attributes) or "(no attribute detail)"
            app.stdout_print(f"{item.address}: {item.action}: {attributes}")

    app.emit(outcome.as_dict(), human)
    return ExitStatus.CHANGES if outcome.drift else ExitStatus.OK
