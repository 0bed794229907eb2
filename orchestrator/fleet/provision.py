"""The Terraform half of the pipeline: plan, provision (apply the reviewed plan), drift, destroy.

Each operation renders the environment's root module, initialises it (skipped when current)
and runs terraform through tools/terraform.py. Provisioning writes the Ansible inventory
`.orchestrate/ENV/inventory.yml` from `terraform output -json`, so any backend and any module
nesting work the same. Nothing here prints or asks: confirmation is a callback the caller gives.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import TerraformLocal
from orchestrator.errors import ExitStatus, OrchestratorError, TerraformError, UsageError
from orchestrator.files import atomic_write, sha256_file
from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, known_hosts_text, write_inventory
from orchestrator.fleet.render import render_environment
from orchestrator.tools.terraform import (
    Drift,
    PlanResult,
    PlanSummary,
    ProgressCallback,
    Terraform,
    Timeouts,
    drift_from_plan_json,
)

PLAN_FILE = "plan.tfplan"
DRIFT_PLAN_FILE = "drift.tfplan"


@dataclass(frozen=True)
class PlanOutcome:
    """A reviewed plan, kept for the apply and the journal."""

    env: str
    changes: bool
    summary: PlanSummary
    plan_file: Path
    plan_sha256: str
    #: wall seconds of the terraform processes (init when it ran, plan)
    terraform_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "changes": self.changes, "summary": self.summary.as_dict(),
                "plan_file": str(self.plan_file), "plan_sha256": self.plan_sha256,
                "terraform_seconds": round(self.terraform_seconds, 3)}


@dataclass(frozen=True)
class HostAction:
    """What provisioning did to a host Terraform cannot see into (a local host's processes)."""

    host: str
    action: str
    """booted (it was not running) or adopted (its container ran without its launcher)."""
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"host": self.host, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class ProvisionOutcome:
    """What provisioning did: the plan, whether it was applied, and the inventory it wrote."""

    plan: PlanOutcome
    applied: bool
    inventory: Path | None = None
    hosts: list[Host] = field(default_factory=list)
    #: pre-flight checks the plan passed before it was applied (none when there was nothing to apply)
    preflight: list[str] = field(default_factory=list)
    #: local hosts booted again or adopted after the apply (Terraform saw no change for them)
    host_actions: list[HostAction] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.plan.as_dict(),
            "applied": self.applied,
            "preflight": self.preflight,
            "inventory": str(self.inventory) if self.inventory else None,
            "hosts": [{"name": h.name, "address": h.address, "private_address": h.private_address,
                       "groups": list(h.groups)} for h in self.hosts],
            "host_actions": [a.as_dict() for a in self.host_actions],
        }


@dataclass(frozen=True)
class DriftOutcome:
    """Resources whose real state differs from Terraform's state."""

    env: str
    drift: list[Drift]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "drift": [{"address": d.address, "action": d.action, "attributes": d.attributes}
                                           for d in self.drift]}


@dataclass(frozen=True)
class DestroyOutcome:
    """How many resources `terraform destroy` removed."""

    env: str
    destroyed: int

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "destroyed": self.destroyed}


#: called with the reviewed plan; False means "do not apply"
Confirm = Callable[[PlanOutcome], bool]

#: hook run after a local environment's apply, with the terraform outputs: boots stopped hosts,
#: adopts containers whose launcher died, and says what it did to which host
LocalFleetHook = Callable[[LoadedEnvironment, Mapping[str, Any]], Sequence[HostAction]]


def needs_confirmation(
    loaded: LoadedEnvironment, *, action: str, yes: bool, interactive: bool, always: bool = False
) -> bool:
    """Whether `action` on `loaded` must be confirmed by a person first.

    Protected environments are confirmed interactively, and so is every environment when
    `always` is set (destroy: losing a fleet by accident costs the same everywhere). Without
    a terminal the caller must say --yes, else this raises UsageError (exit 2) before
    anything has been touched.
    """
    if yes or not (loaded.env.protected or always):
        return False
    if not interactive:
        what = (f"environment {loaded.name!r} is protected: {action}" if loaded.env.protected
                else f"{action} of environment {loaded.name!r}")
        raise UsageError(
            f"{what} needs confirmation, and there is no terminal to ask on; pass --yes to confirm "
            "(nothing was changed)"
        )
    return True


def terraform_for(loaded: LoadedEnvironment, *, timeouts: Timeouts | None = None) -> Terraform:
    """Render the environment's root module and return a Terraform adapter for it.

    The per-command timeouts are the environment file's `terraform.timeouts` over the defaults;
    init keeps to the environment's provider lock file when the repository has one.
    """
    return _rendered_terraform(loaded, timeouts=timeouts)[1]


def _rendered_terraform(loaded: LoadedEnvironment, *,
                        timeouts: Timeouts | None = None) -> tuple[LoadedEnvironment, Terraform]:
    """`terraform_for`, and the environment as rendered (its local network filled in)."""
    rendered = render_environment(loaded)
    loaded = rendered.loaded
    module_dir = loaded.project_dir / "terraform" / "modules" / loaded.env.terraform.module
    timeouts = timeouts or Timeouts(**loaded.env.terraform.timeouts.seconds())
    return loaded, Terraform(rendered.terraform_dir, env_name=loaded.name, state_dir=loaded.state_dir,
                             timeouts=timeouts, timeouts_source=_display_path(loaded), module_dirs=[module_dir],
                             lock_file=rendered.lock_file)


def _display_path(loaded: LoadedEnvironment) -> str:
    """The environment file relative to the project dir (as operators name it)."""
    if not loaded.path.is_absolute():
        return str(loaded.path)
    return os.path.relpath(loaded.path, loaded.project_dir)


def plan(loaded: LoadedEnvironment, *, on_progress: ProgressCallback | None = None,
         terraform: Terraform | None = None) -> PlanOutcome:
    """Render, init and plan; keep the plan file (and its sha256) for provision and the journal."""
    tf = terraform or terraform_for(loaded)
    tf.init(on_progress=on_progress)
    plan_file = tf.working_dir / PLAN_FILE
    result: PlanResult = tf.plan(plan_file, on_progress=on_progress)
    digest = sha256_file(plan_file)
    plan_file.with_name(PLAN_FILE + ".sha256").write_text(f"{digest}  {PLAN_FILE}\n")
    return PlanOutcome(env=loaded.name, changes=result.changes, summary=result.summary, plan_file=plan_file,
                       plan_sha256=digest, terraform_seconds=tf.elapsed)


def provision(
    loaded: LoadedEnvironment,
    *,
    confirm: Confirm | None = None,
    on_progress: ProgressCallback | None = None,
    local_fleet_hook: LocalFleetHook | None = None,
) -> ProvisionOutcome:
    """Plan, ask `confirm` (when given) and apply exactly that plan file; write the inventory.

    A plan without changes is not applied (an apply would only cost time); the inventory is
    written from the outputs either way. For local environments `local_fleet_hook` (default:
    orchestrator.fleet.local.terraform.ensure_fleet_from_outputs) boots hosts whose process died and
    adopts containers whose launcher died, which Terraform cannot see; the outcome lists them. A local
    fleet's subnet is chosen here when the env file leaves it out.
    """
    loaded, tf = _rendered_terraform(loaded)
    reviewed = plan(loaded, on_progress=on_progress, terraform=tf)
    preflight: list[str] = []
    if reviewed.changes:
        # pre-flight, before anyone is asked and before anything is applied (PreflightFailed, exit 2)
        preflight = preflight_graph(tf.show_plan(reviewed.plan_file), reviewed.plan_file)
        if confirm is not None and not confirm(reviewed):
            return ProvisionOutcome(plan=reviewed, applied=False, preflight=preflight)
        if sha256_file(reviewed.plan_file) != reviewed.plan_sha256:
            raise TerraformError(f"plan file {reviewed.plan_file} changed after review; run provision again")
        tf.apply(reviewed.plan_file, on_progress=on_progress)
    outputs = tf.output()
    actions: list[HostAction] = []
    if isinstance(loaded.env.terraform, TerraformLocal):
        hook = local_fleet_hook or _default_local_fleet_hook
        actions = list(hook(loaded, outputs))
    inventory, hosts = write_inventory_from_outputs(loaded, outputs)
    return ProvisionOutcome(plan=reviewed, applied=reviewed.changes, inventory=inventory, hosts=hosts,
                            preflight=preflight, host_actions=actions)


class PreflightFailed(OrchestratorError):
    """A pre-flight check refused the run before anything was applied or any host touched.

    Exit 2 (bad input): what fails is the project's own configuration (its Terraform graph, its
    heal policy, its environment file), and nothing changed.
    """

    exit_status = ExitStatus.BAD_INPUT


#: the graph checks run on a fresh plan before it is applied
PREFLIGHT_GRAPH_CHECKS = ("references", "acyclic")


def preflight_graph(plan_json: Mapping[str, Any], plan_file: Path) -> list[str]:
    """The cheap graph checks of orchestrator.models.graph on a plan's JSON: every reference
    resolves and the resource graph has no cycle. PreflightFailed naming each problem; else the
    names of the checks that passed."""
    from orchestrator.models import graph as graph_model  # networkx: only when a plan is applied

    report = graph_model.check_plan(plan_json)
    if not report.ok:
        raise PreflightFailed(
            f"{plan_file}: the plan's resource graph is broken, nothing was applied: "
            + "; ".join(str(p) for p in report.problems),
            hint="`orchestrate graph ENV` draws the graph; `orchestrate verify ENV` runs every check",
        )
    return list(PREFLIGHT_GRAPH_CHECKS)


def _default_local_fleet_hook(loaded: LoadedEnvironment, outputs: Mapping[str, Any]) -> list[HostAction]:
    from orchestrator.fleet.local.fleet import START_ACTIONS
    from orchestrator.fleet.local.terraform import ensure_fleet_from_outputs

    return [HostAction(h.name, h.action, START_ACTIONS[h.action])
            for h in ensure_fleet_from_outputs(loaded, outputs) if h.action in START_ACTIONS]


def hosts_from_outputs(outputs: Mapping[str, Any]) -> list[Host]:
    """The `hosts` output (list of {name, address, private_address, groups}) as Hosts."""
    raw = outputs.get("hosts")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise TerraformError("terraform outputs have no `hosts` list; does the module output `hosts`?")
    return [Host.from_output(item) for item in raw]


def write_inventory_from_outputs(loaded: LoadedEnvironment, outputs: Mapping[str, Any]) -> tuple[Path, list[Host]]:
    """Write .orchestrate/ENV/inventory.yml from `terraform output -json` values."""
    from orchestrator.fleet.local.keys import ssh_key_path

    hosts = hosts_from_outputs(outputs)
    if any(h.host_key for h in hosts):
        # cloud hosts: their keys as terraform recorded them at creation (made by the controller,
        # given to cloud-init); the file is the whole truth, hosts that left take their keys along
        missing = sorted(h.name for h in hosts if not h.host_key)
        if missing:
            raise TerraformError(f"terraform recorded no SSH host key for {', '.join(missing)}; "
                                 "refusing to write a known_hosts file that would not check them")
        atomic_write(loaded.paths.known_hosts, known_hosts_text(hosts))
    connection = ConnectionSettings(
        user=str(outputs.get("ssh_user") or "root"),
        private_key=ssh_key_path(loaded.project_dir),
        known_hosts=loaded.paths.known_hosts,
    )
    path = write_inventory(loaded.paths.inventory, build_inventory(loaded.name, hosts, connection))
    return path, hosts


def drift(loaded: LoadedEnvironment, *, on_progress: ProgressCallback | None = None) -> DriftOutcome:
    """Refresh-only plan: which resources changed behind Terraform's back, and which attributes."""
    tf = terraform_for(loaded)
    tf.init(on_progress=on_progress)
    plan_file = tf.working_dir / DRIFT_PLAN_FILE
    result = tf.plan(plan_file, refresh_only=True, on_progress=on_progress)
    if not result.events.drifted:
        # -detailed-exitcode also reports output-only changes; without drift events there is
        # nothing to list, and `terraform show` (another provider load, ~2 s) is skipped.
        return DriftOutcome(env=loaded.name, drift=[])
    return DriftOutcome(env=loaded.name, drift=drift_from_plan_json(tf.show_plan(plan_file)))


def destroy(loaded: LoadedEnvironment, *, on_progress: ProgressCallback | None = None) -> DestroyOutcome:
    """`terraform destroy`; removes the inventory, known_hosts and host keys of the destroyed hosts."""
    tf = terraform_for(loaded)
    tf.init(on_progress=on_progress)
    log = tf.destroy(on_progress=on_progress)
    for path in (loaded.paths.inventory, loaded.paths.known_hosts):
        path.unlink(missing_ok=True)
    shutil.rmtree(loaded.paths.host_keys, ignore_errors=True)
    for name in (PLAN_FILE, PLAN_FILE + ".sha256", DRIFT_PLAN_FILE):
        (tf.working_dir / name).unlink(missing_ok=True)
    return DestroyOutcome(env=loaded.name, destroyed=int(log.change_summary.get("remove", 0)))
