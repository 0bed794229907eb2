"""`orchestrate provision ENV [--yes]`: apply the reviewed plan and write the inventory."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.cli._terraform import ProgressPrinter, ensure_local_image, summary_table
from orchestrator.errors import ExitStatus
from orchestrator.fleet.provision import PlanOutcome, ProvisionOutcome, needs_confirmation, provision
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.session import locked_run


@click.command("provision")
@env_argument
@click.option("--yes", "-y", is_flag=True, help="Apply without asking, also on a protected environment.")
@lock_wait_option
@click.option("--resume", "resume", metavar="RUN_ID", default=None, hidden=True,
              help="Continue run RUN_ID (used by `orchestrate resume`, also from another controller).")
@verb
def command(app: AppContext, env_name: str, yes: bool, lock_wait: float, resume: str | None) -> ExitStatus:
    """Plan ENV, then apply exactly that plan file; write .orchestrate/ENV/inventory.yml.

    A protected environment asks for confirmation after showing the plan; without a
    terminal it refuses (exit 2, nothing applied) unless --yes is given. Exit 75, with nothing
    applied, when another run holds Terraform's state lock or applied between this run's plan
    and its apply (a stale plan): run it again.
    """
    loaded = app.load(env_name)
    ask = needs_confirmation(loaded, action="provision", yes=yes, interactive=app.interactive)

    def confirm(reviewed: PlanOutcome) -> bool:
        app.print_table(summary_table(reviewed.summary, f"plan for {env_name} (protected)"), err=True)
        return click.confirm(f"apply this plan to {env_name}?", default=False, err=True)

    app.info(f"provisioning {env_name} ({loaded.env.target})…")
    ensure_local_image(app, loaded)
    # The environment lock keeps a deploy or another provision out (on every controller when the
    # environment's state is in S3); the S3 state lock (use_lockfile) is a second line for
    # terraform runs outside orchestrate. The journal lists the run; `orchestrate resume` repeats
    # its step (provisioning is idempotent), with --yes when the run had it.
    argv = ["provision", env_name, *(["--yes"] if yes else [])]
    with locked_run(coordination_for(loaded), command="provision", argv=argv, steps=["provision"], resume=resume,
                    wait=lock_wait, on_wait=app.info, env=env_name) as session, \
            session.run.step("provision") as step:
        outcome: ProvisionOutcome = provision(loaded, confirm=confirm if ask else None,
                                              on_progress=ProgressPrinter(app))
        step.run.set_plan(outcome.plan.plan_sha256)
        step.detail.update(applied=outcome.applied, changes=outcome.plan.changes,
                           summary=outcome.plan.summary.totals, hosts=len(outcome.hosts),
                           host_actions=[a.as_dict() for a in outcome.host_actions])

    def human() -> None:
        if not outcome.applied and outcome.plan.changes:
            app.stdout_print(f"{env_name}: not confirmed; nothing applied")
            return
        if outcome.applied:
            app.stdout_print(summary_table(outcome.plan.summary, f"applied to {env_name}"))
        else:
            app.stdout_print(f"{env_name}: no changes to apply")
        app.stdout_print(f"inventory: {outcome.inventory} ({len(outcome.hosts)} hosts)")
        for action in outcome.host_actions:
            app.stdout_print(f"{action.host}: {action.action}: {action.detail}")

    app.emit(outcome.as_dict(), human)
    if outcome.plan.changes and not outcome.applied:
        return ExitStatus.FAILED
    return ExitStatus.OK
