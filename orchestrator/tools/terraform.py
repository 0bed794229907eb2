"""Adapter over the terraform CLI (1.6+), called through tools/process.run_command.

python-terraform is not used: it is broken on Terraform >= 0.15 (it sends the removed
`-force`, `-auto-approve=false` without a plan file, and `output(name)` raises TypeError). Every call:

- gets its own CLI configuration file (a filesystem mirror when /opt/tf-plugins exists, else
  the registry) through TF_CLI_CONFIG_FILE, a shared plugin cache, TF_IN_AUTOMATION=1 and
  TF_INPUT=0, so nothing depends on ~/.terraformrc and nothing ever waits for input;
- uses `-json` where terraform has it: the event stream drives a progress callback and
  terraform's error diagnostics are collected and raised verbatim in a TerraformError (or a
  StateLockError when the state lock is held by someone else, a StalePlanError when another
  run changed the state between our plan and our apply);
- has a timeout per kind of command (`Timeouts`; environment files set them under
  `terraform.timeouts`); a command past it is stopped and raises TerraformTimeout.

The argv of every command is built by a pure function (`init_argv`, `plan_argv`, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import CommandError, CommandTimeout, ExitStatus, StateLockError, TerraformError
from orchestrator.tools.process import CommandResult, run_command

TERRAFORM = "terraform"
PLUGIN_MIRROR = Path("/opt/tf-plugins")
SHARED_PLUGIN_CACHE = Path("/var/cache/orchestrate/terraform-plugins")
INIT_STAMP = ".orchestrate-init.sha256"
#: the dependency lock file: provider versions and checksums (kept per environment in the repository)
LOCK_FILE = ".terraform.lock.hcl"
#: seconds terraform gets after SIGINT (past its time limit) before it is killed
TERRAFORM_STOP_GRACE = 60.0

#: `terraform plan -detailed-exitcode`: 0 no changes, 1 error, 2 changes present
PLAN_NO_CHANGES = 0
PLAN_CHANGES = 2

_LOCK_ERROR_RE = re.compile(r"error acquiring the state lock", re.IGNORECASE)
_STALE_PLAN_RE = re.compile(r"saved plan is stale", re.IGNORECASE)
_LOCK_FIELD_RE = re.compile(r"^\s*(ID|Path|Operation|Who|Version|Created|Info):\s*(.*?)\s*$", re.MULTILINE)


class StalePlanError(TerraformError):
    """The saved plan no longer matches the state: another run applied after our plan (exit 75).

    Nothing was applied; planning again (against the new state) is the remedy, like waiting
    for a held state lock, so it shares that exit code.
    """

    exit_status = ExitStatus.LOCK_BUSY


class TerraformTimeout(TerraformError):
    """A terraform command ran past its timeout and was stopped."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds each kind of terraform call may take before it is stopped.

    Environment files override them under `terraform.timeouts` (durations such as 90m).
    """

    init: float = 300
    plan: float = 900
    apply: float = 3600
    destroy: float = 3600
    output: float = 120
    show: float = 300
    fmt: float = 60
    validate: float = 300
    graph: float = 300


# --- pure builders --------------------------------------------------------------------------


def cli_config_text(mirror: Path | None) -> str:
    """Contents of the CLI configuration file: the filesystem mirror when given, else the registry."""
    if mirror is None:
        return "# Rendered by orchestrate: providers from the registry.\n"
    return (
        "# Rendered by orchestrate: providers from the local filesystem mirror only.\n"
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {json.dumps(str(mirror))}\n"
        '    include = ["registry.terraform.io/*/*"]\n'
        "  }\n"
        "  direct {\n"
        '    exclude = ["registry.terraform.io/*/*"]\n'
        "  }\n"
        "}\n"
    )


def terraform_env(cli_config: Path, plugin_cache: Path) -> dict[str, str]:
    """Environment variables added to every terraform call."""
    return {
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "TF_PLUGIN_CACHE_DIR": str(plugin_cache),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        # A root without a lock file (an environment that keeps none in the repository) would
        # otherwise ignore the cache and copy the ~700 MB provider again; a root with one only
        # takes a cached provider whose checksum the lock file lists.
        "TF_PLUGIN_CACHE_MAY_BREAK_DEPENDENCY_LOCK_FILE": "1",
    }


def init_argv(*, reconfigure: bool = True, lockfile_readonly: bool = False) -> list[str]:
    """`terraform init`: non-interactive, JSON diagnostics.

    -reconfigure because the backend block is derived from environment.yml: the rendered
    configuration is the truth, and migrating state between backends is an operator's act.
    With `lockfile_readonly` (-lockfile=readonly) init installs exactly the providers of the lock
    file and fails on any other one instead of recording it.
    """
    argv = [TERRAFORM, "init", "-input=false", "-no-color", "-json"]
    if reconfigure:
        argv.append("-reconfigure")
    if lockfile_readonly:
        argv.append("-lockfile=readonly")
    return argv


def plan_argv(plan_file: Path, *, refresh_only: bool = False, destroy: bool = False,
              lock_timeout: str = "0s") -> list[str]:
    """`terraform plan -out=FILE -detailed-exitcode -json` (exit 2 means changes)."""
    argv = [TERRAFORM, "plan", "-input=false", "-no-color", "-json", "-detailed-exitcode",
            f"-lock-timeout={lock_timeout}", f"-out={plan_file}"]
    if refresh_only:
        argv.append("-refresh-only")
    if destroy:
        argv.append("-destroy")
    return argv


def apply_argv(plan_file: Path, *, lock_timeout: str = "0s") -> list[str]:
    """`terraform apply PLANFILE -json`: applies exactly the reviewed plan."""
    return [TERRAFORM, "apply", "-input=false", "-no-color", "-json", f"-lock-timeout={lock_timeout}",
            str(plan_file)]


def destroy_argv(*, lock_timeout: str = "0s") -> list[str]:
    """`terraform destroy -auto-approve -json`."""
    return [TERRAFORM, "destroy", "-auto-approve", "-input=false", "-no-color", "-json",
            f"-lock-timeout={lock_timeout}"]


def output_argv() -> list[str]:
    """`terraform output -json` (all outputs)."""
    return [TERRAFORM, "output", "-no-color", "-json"]


def show_argv(plan_file: Path) -> list[str]:
    """`terraform show -json PLANFILE`."""
    return [TERRAFORM, "show", "-no-color", "-json", str(plan_file)]


def validate_argv() -> list[str]:
    """`terraform validate -json` (needs an initialised directory)."""
    return [TERRAFORM, "validate", "-no-color", "-json"]


def graph_argv(*, plan_destroy: bool = False) -> list[str]:
    """`terraform graph` (DOT on stdout); `-type=plan-destroy` draws what a destroy would do, in order.

    It reads the state through the backend and changes nothing: no init, no plan file, no lock.
    """
    argv = [TERRAFORM, "graph"]
    if plan_destroy:
        argv.append("-type=plan-destroy")
    return argv


def fmt_check_argv(directory: Path) -> list[str]:
    """`terraform fmt -check -recursive DIR` (exit 3 lists files that are not formatted)."""
    return [TERRAFORM, "fmt", "-check", "-recursive", "-no-color", str(directory)]


# --- the -json event stream -----------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    """One terraform diagnostic (error or warning), as terraform reported it."""

    severity: str
    summary: str
    detail: str = ""
    filename: str = ""
    line: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Diagnostic:
        rng = data.get("range") or {}
        start = rng.get("start") or {}
        return cls(
            severity=str(data.get("severity", "error")),
            summary=str(data.get("summary", "")).strip(),
            detail=str(data.get("detail", "")).strip(),
            filename=str(rng.get("filename", "")),
            line=start.get("line"),
        )

    def render(self) -> str:
        """`summary` + location + detail, as terraform would show it (without box drawing)."""
        where = f" ({self.filename}:{self.line})" if self.filename and self.line else (
            f" ({self.filename})" if self.filename else "")
        text = f"{self.summary}{where}"
        if self.detail:
            text += "\n" + self.detail
        return text

    @property
    def is_lock_error(self) -> bool:
        return bool(_LOCK_ERROR_RE.search(self.summary))

    @property
    def is_stale_plan(self) -> bool:
        return bool(_STALE_PLAN_RE.search(self.summary))


@dataclass(frozen=True)
class ProgressEvent:
    """What the live display shows: a resource, what happens to it, for how long."""

    phase: str  # planned | start | progress | complete | errored | refresh | drift | summary
    address: str
    action: str
    elapsed: float | None = None
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]

_HOOK_PHASES = {
    "apply_start": "start",
    "apply_progress": "progress",
    "apply_complete": "complete",
    "apply_errored": "errored",
    "refresh_start": "refresh",
}


def parse_event(line: str) -> dict[str, Any] | None:
    """One line of terraform's -json stream as a mapping, or None for anything else."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def progress_from_event(event: Mapping[str, Any]) -> ProgressEvent | None:
    """The ProgressEvent of one stream event, or None when it has nothing to show."""
    kind = event.get("type")
    if kind in _HOOK_PHASES:
        hook = event.get("hook") or {}
        resource = hook.get("resource") or {}
        return ProgressEvent(
            phase=_HOOK_PHASES[str(kind)],
            address=str(resource.get("addr", "")),
            action=str(hook.get("action", "refresh" if kind == "refresh_start" else "")),
            elapsed=hook.get("elapsed_seconds"),
            message=str(event.get("@message", "")),
        )
    if kind in {"planned_change", "resource_drift"}:
        change = event.get("change") or {}
        resource = change.get("resource") or {}
        return ProgressEvent(
            phase="planned" if kind == "planned_change" else "drift",
            address=str(resource.get("addr", "")),
            action=str(change.get("action", "")),
            message=str(event.get("@message", "")),
        )
    if kind == "change_summary":
        return ProgressEvent(phase="summary", address="", action="", message=str(event.get("@message", "")))
    return None


@dataclass
class EventLog:
    """Collects what a -json run reported: diagnostics, planned changes, drift, summary."""

    on_progress: ProgressCallback | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    planned: list[tuple[str, str, str]] = field(default_factory=list)  # (address, type, action)
    drifted: list[tuple[str, str]] = field(default_factory=list)  # (address, action)
    change_summary: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    other_lines: list[str] = field(default_factory=list)

    def feed(self, line: str) -> None:
        """Take one stdout line of terraform."""
        event = parse_event(line)
        if event is None:
            if line.strip():
                self.other_lines.append(line)
            return
        kind = event.get("type")
        if kind == "diagnostic":
            self.diagnostics.append(Diagnostic.from_json(event.get("diagnostic") or {}))
        elif kind == "planned_change":
            change = event.get("change") or {}
            resource = change.get("resource") or {}
            self.planned.append((str(resource.get("addr", "")), str(resource.get("resource_type", "")),
                                 str(change.get("action", ""))))
        elif kind == "resource_drift":
            change = event.get("change") or {}
            self.drifted.append((str((change.get("resource") or {}).get("addr", "")), str(change.get("action", ""))))
        elif kind == "change_summary":
            self.change_summary = dict(event.get("changes") or {})
        elif kind == "outputs":
            self.outputs = dict(event.get("outputs") or {})
        elif kind == "log" and str(event.get("@level")) == "error":
            # init -json reports some failures as plain error-level log lines
            self.diagnostics.append(Diagnostic(severity="error", summary=str(event.get("@message", ""))))
        if self.on_progress is not None:
            progress = progress_from_event(event)
            if progress is not None:
                self.on_progress(progress)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def lock_info(text: str) -> dict[str, str]:
    """Fields of terraform's "Lock Info:" block (ID, Path, Operation, Who, Created, ...)."""
    return {m.group(1): m.group(2) for m in _LOCK_FIELD_RE.finditer(text)}


def is_lock_error(diagnostics: Iterable[Diagnostic], stderr: str = "") -> bool:
    """Whether a failed run failed because the state lock is held."""
    return any(d.is_lock_error for d in diagnostics) or bool(_LOCK_ERROR_RE.search(stderr))


def lock_error_message(action: str, env_name: str, diagnostics: Sequence[Diagnostic], stderr: str = "") -> str:
    """One line saying who holds the state lock, as far as terraform says."""
    text = "\n".join(d.detail for d in diagnostics if d.is_lock_error) or stderr
    info = lock_info(text)
    held = []
    if info.get("Who"):
        held.append(f"by {info['Who']}")
    if info.get("Operation"):
        # "OperationTypeApply" -> "apply"
        held.append(f"for {info['Operation'].removeprefix('OperationType').lower() or info['Operation']}")
    if info.get("Created"):
        held.append(f"since {info['Created']}")
    if info.get("ID"):
        held.append(f"lock ID {info['ID']}")
    details = f" ({', '.join(held)})" if held else ""
    return (f"terraform {action} for {env_name} refused: the Terraform state lock is held by another run"
            f"{details}; nothing was changed, try again when it has finished")


def is_stale_plan(diagnostics: Iterable[Diagnostic], stderr: str = "") -> bool:
    """Whether an apply failed because the state changed after the plan file was made."""
    return any(d.is_stale_plan for d in diagnostics) or bool(_STALE_PLAN_RE.search(stderr))


def stale_plan_message(action: str, env_name: str) -> str:
    """One line for terraform's "Saved plan is stale"."""
    return (f"terraform {action} for {env_name} refused: the saved plan is stale, another run changed the "
            "Terraform state after this plan was made; nothing was applied")


def failure_message(action: str, env_name: str, diagnostics: Sequence[Diagnostic], fallback: str) -> str:
    """"terraform ACTION for ENV failed: " + terraform's error diagnostics, verbatim."""
    errors = [d for d in diagnostics if d.severity == "error"]
    body = "\n\n".join(d.render() for d in errors) if errors else fallback.strip()
    return f"terraform {action} for {env_name} failed: {body or 'no error message (exit status only)'}"


# --- plan JSON ------------------------------------------------------------------------------

ACTION_COLUMNS = ("add", "change", "destroy")


def action_columns(action: str | Sequence[str]) -> list[str]:
    """Which of add/change/destroy an action counts in (a replacement counts in add and destroy)."""
    actions = [action] if isinstance(action, str) else list(action)
    if "replace" in actions or ("create" in actions and "delete" in actions):
        return ["add", "destroy"]
    columns = []
    if "create" in actions:
        columns.append("add")
    if "update" in actions:
        columns.append("change")
    if "delete" in actions:
        columns.append("destroy")
    return columns


@dataclass(frozen=True)
class PlanSummary:
    """add/change/destroy counts per resource type."""

    by_type: dict[str, dict[str, int]]

    @property
    def totals(self) -> dict[str, int]:
        totals = dict.fromkeys(ACTION_COLUMNS, 0)
        for counts in self.by_type.values():
            for column in ACTION_COLUMNS:
                totals[column] += counts.get(column, 0)
        return totals

    @property
    def has_changes(self) -> bool:
        return any(self.totals.values())

    def as_dict(self) -> dict[str, Any]:
        return {"totals": self.totals, "by_type": self.by_type}


def summarize_changes(changes: Iterable[tuple[str, str | Sequence[str]]]) -> PlanSummary:
    """Summary from (resource type, action) pairs: planned_change events or resource_changes."""
    counter: dict[str, Counter[str]] = {}
    for resource_type, action in changes:
        for column in action_columns(action):
            counter.setdefault(resource_type, Counter())[column] += 1
    by_type = {rtype: {c: counts.get(c, 0) for c in ACTION_COLUMNS} for rtype, counts in sorted(counter.items())}
    return PlanSummary(by_type=by_type)


def summarize_plan_json(plan: Mapping[str, Any]) -> PlanSummary:
    """Summary of `terraform show -json PLANFILE` output (its resource_changes)."""
    pairs = []
    for change in plan.get("resource_changes") or []:
        pairs.append((str(change.get("type", "")), tuple((change.get("change") or {}).get("actions") or ())))
    return summarize_changes(pairs)


@dataclass(frozen=True)
class Drift:
    """A resource whose real state differs from Terraform's state."""

    address: str
    action: str
    attributes: list[str]


def changed_attributes(before: Any, after: Any) -> list[str]:
    """Top-level attribute names whose values differ between two resource states."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return []
    keys = sorted(set(before) | set(after))
    return [k for k in keys if before.get(k) != after.get(k)]


def drift_from_plan_json(plan: Mapping[str, Any]) -> list[Drift]:
    """The plan's `resource_drift`: each drifted resource and its changed attributes."""
    found = []
    for entry in plan.get("resource_drift") or []:
        change = entry.get("change") or {}
        actions = change.get("actions") or []
        found.append(Drift(
            address=str(entry.get("address", "")),
            action="/".join(str(a) for a in actions),
            attributes=changed_attributes(change.get("before"), change.get("after")),
        ))
    return found



# --- the adapter ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanResult:
    """A saved plan: whether it changes anything, and its summary."""

    plan_file: Path
    changes: bool
    summary: PlanSummary
    events: EventLog


class Terraform:
    """terraform in one rendered root module, on behalf of one environment."""

    def __init__(
        self,
        working_dir: Path,
        *,
        env_name: str,
        state_dir: Path,
        timeouts: Timeouts | None = None,
        timeouts_source: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        mirror: Path | None = PLUGIN_MIRROR,
        plugin_cache: Path | None = None,
        module_dirs: Sequence[Path] = (),
        lock_file: Path | None = None,
    ) -> None:
        self.working_dir = working_dir
        self.env_name = env_name
        self.state_dir = state_dir
        self.timeouts = timeouts or Timeouts()
        #: where the timeouts are configured (named in a timeout's message), e.g. the environment file
        self.timeouts_source = timeouts_source
        self.extra_env = dict(extra_env or {})
        self.mirror = mirror if mirror is not None and mirror.is_dir() else None
        self.plugin_cache = plugin_cache or default_plugin_cache(state_dir)
        self.cli_config = state_dir / "terraformrc"
        # modules the root calls: a provider or module added there also needs a new init
        self.module_dirs = list(module_dirs)
        #: the provider lock file kept in the repository, copied into working_dir by the render:
        #: with it, init runs with -lockfile=readonly (None: terraform maintains its own)
        self.lock_file = lock_file
        #: wall seconds spent in terraform processes by this adapter (for the overhead figure)
        self.elapsed = 0.0

    # -- plumbing --

    def environment(self) -> dict[str, str]:
        """Write the CLI config file (when it changed) and return the per-call environment."""
        return {**prepare_environment(self.cli_config, self.plugin_cache, self.mirror), **self.extra_env}

    def _run_json(self, action: str, argv: list[str], *, timeout: float, ok_codes: Sequence[int] = (0,),
                  on_progress: ProgressCallback | None = None) -> tuple[CommandResult, EventLog]:
        """Run a -json command; map failures to TerraformError / StateLockError."""
        log = EventLog(on_progress=on_progress)
        result = self._run(action, argv, timeout=timeout, ok_codes=None, on_stdout=log.feed)
        if result.returncode not in ok_codes:
            self._raise(action, log.diagnostics, result.stderr + "\n".join(log.other_lines))
        return result, log

    def _run(self, action: str, argv: list[str], *, timeout: float, ok_codes: Sequence[int] | None = (0,),
             on_stdout: Callable[[str], None] | None = None) -> CommandResult:
        try:
            # past its limit terraform gets SIGINT, its own graceful stop (it finishes the calls in
            # flight, writes the state and releases the lock), and a minute for it before SIGKILL
            result = run_command(argv, cwd=self.working_dir, env=self.environment(), timeout=timeout,
                                 check=False, on_stdout=on_stdout, stop_signal=signal.SIGINT,
                                 stop_grace=TERRAFORM_STOP_GRACE)
        except CommandTimeout as exc:
            raise timeout_error(action, self.env_name, timeout, self.timeouts_source,
                                working_dir=self.working_dir) from exc
        except CommandError as exc:  # not found
            raise TerraformError(f"terraform {action} for {self.env_name} failed: {exc.message}") from exc
        self.elapsed += result.duration
        if ok_codes is not None and result.returncode not in ok_codes:
            self._raise(action, [], result.stderr or result.stdout)
        return result

    def _raise(self, action: str, diagnostics: Sequence[Diagnostic], text: str) -> None:
        if is_stale_plan(diagnostics, text):
            raise StalePlanError(
                stale_plan_message(action, self.env_name),
                hint=f"plan again against the current state (`orchestrate provision {self.env_name}`) "
                     "and review what is left to change",
            )
        if is_lock_error(diagnostics, text):
            lock_id = lock_info("\n".join(d.detail for d in diagnostics if d.is_lock_error) or text).get("ID")
            raise StateLockError(
                lock_error_message(action, self.env_name, diagnostics, text),
                hint="if no other run is going on, the lock is stale: "
                     f"`terraform force-unlock {lock_id or 'LOCK_ID'}` in {self.working_dir}",
            )
        raise TerraformError(failure_message(action, self.env_name, diagnostics, _strip_cli_noise(text)))

    # -- commands --

    def init_stamp(self) -> str:
        """Hash of what init depends on: the *.tf files (root and modules), lock file, CLI config."""
        digest = hashlib.sha256(cli_config_text(self.mirror).encode())
        paths = [*sorted(self.working_dir.glob("*.tf")), self.working_dir / LOCK_FILE]
        for module_dir in self.module_dirs:
            paths += sorted(module_dir.glob("*.tf"))
        for path in paths:
            if path.exists():
                digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def init(self, *, force: bool = False, on_progress: ProgressCallback | None = None) -> bool:
        """`terraform init` unless .terraform is current for these files; True when it ran."""
        stamp_file = self.working_dir / ".terraform" / INIT_STAMP
        if not force and stamp_file.exists() and stamp_file.read_text().strip() == self.init_stamp():
            return False
        try:
            self._run_json("init", init_argv(lockfile_readonly=self.lock_file is not None),
                           timeout=self.timeouts.init, on_progress=on_progress)
        except TerraformError as exc:
            if self.lock_file is not None and "lock file" in exc.message and exc.hint is None:
                exc.hint = (f"the providers are pinned by {self.lock_file}: to add or upgrade one, regenerate it "
                            "with `terraform providers lock` (README, Terraform) and commit it")
            raise
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(self.init_stamp() + "\n")
        return True

    def plan(self, plan_file: Path, *, refresh_only: bool = False, destroy: bool = False,
             on_progress: ProgressCallback | None = None) -> PlanResult:
        """`terraform plan -out=plan_file -detailed-exitcode`; summary from the planned_change events."""
        result, log = self._run_json("plan", plan_argv(plan_file, refresh_only=refresh_only, destroy=destroy),
                                     timeout=self.timeouts.plan, ok_codes=(PLAN_NO_CHANGES, PLAN_CHANGES),
                                     on_progress=on_progress)
        summary = summarize_changes((rtype, action) for _, rtype, action in log.planned)
        return PlanResult(plan_file=plan_file, changes=result.returncode == PLAN_CHANGES, summary=summary,
                          events=log)

    def apply(self, plan_file: Path, *, on_progress: ProgressCallback | None = None) -> EventLog:
        """`terraform apply PLANFILE`."""
        _, log = self._run_json("apply", apply_argv(plan_file), timeout=self.timeouts.apply,
                                on_progress=on_progress)
        return log

    def destroy(self, *, on_progress: ProgressCallback | None = None) -> EventLog:
        """`terraform destroy -auto-approve`."""
        _, log = self._run_json("destroy", destroy_argv(), timeout=self.timeouts.destroy, on_progress=on_progress)
        return log

    def output(self) -> dict[str, Any]:
        """All outputs as {name: value}."""
        result = self._run("output", output_argv(), timeout=self.timeouts.output)
        try:
            data = json.loads(result.stdout or "{}")
        except json.JSONDecodeError as exc:
            raise TerraformError(f"terraform output for {self.env_name} failed: not JSON ({exc})") from None
        return {name: (body or {}).get("value") for name, body in data.items()}

    def validate(self) -> list[Diagnostic]:
        """`terraform validate`: the diagnostics (errors and warnings); empty when valid.

        A failure that is not a diagnostic (no JSON answer) raises TerraformError with terraform's
        own message.
        """
        result = self._run("validate", validate_argv(), timeout=self.timeouts.validate, ok_codes=None)
        try:
            data = json.loads(result.stdout or "{}")
        except json.JSONDecodeError as exc:
            raise TerraformError(failure_message(
                "validate", self.env_name, [],
                _strip_cli_noise(result.stderr) or f"exit {result.returncode}, no JSON answer ({exc})")) from None
        diagnostics = [Diagnostic.from_json(d) for d in data.get("diagnostics") or []]
        if not data.get("valid", False) and not any(d.severity == "error" for d in diagnostics):
            diagnostics.append(Diagnostic(severity="error", summary="terraform validate: invalid"))
        return diagnostics

    def graph(self, *, plan_destroy: bool = False) -> str:
        """`terraform graph` (with `plan_destroy`: `-type=plan-destroy`) as DOT text.

        TerraformError with terraform's message when it fails (e.g. an S3 backend without
        credentials here).
        """
        return self._run("graph", graph_argv(plan_destroy=plan_destroy), timeout=self.timeouts.graph).stdout

    def show_plan(self, plan_file: Path) -> dict[str, Any]:
        """`terraform show -json PLANFILE` as a mapping."""
        result = self._run("show", show_argv(plan_file), timeout=self.timeouts.show)
        try:
            data = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise TerraformError(f"terraform show for {self.env_name} failed: not JSON ({exc})") from None
        return data if isinstance(data, dict) else {}


def default_plugin_cache(state_dir: Path) -> Path:
    """The machine-wide plugin cache when it can be used, else one under the state dir."""
    try:
        SHARED_PLUGIN_CACHE.mkdir(parents=True, exist_ok=True)
        if os.access(SHARED_PLUGIN_CACHE, os.W_OK):
            return SHARED_PLUGIN_CACHE
    except OSError:
        pass
    return state_dir / "terraform-plugins"


def _strip_cli_noise(text: str) -> str:
    """Terraform's human error output without box-drawing characters."""
    lines = [re.sub(r"^[\u2502\u2577\u2575\u256d\u2570\s]+", "", line).rstrip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line).strip()


def prepare_environment(cli_config: Path, plugin_cache: Path, mirror: Path | None) -> dict[str, str]:
    """Write the CLI config file `cli_config` (when it changed) and return the per-call environment."""
    cli_config.parent.mkdir(parents=True, exist_ok=True)
    plugin_cache.mkdir(parents=True, exist_ok=True)
    text = cli_config_text(mirror)
    if not cli_config.exists() or cli_config.read_text() != text:
        cli_config.write_text(text)
    return terraform_env(cli_config, plugin_cache)


def timeout_error(action: str, env_name: str, timeout: float, source: str | None, *,
                  working_dir: Path | None = None) -> TerraformTimeout:
    """The error of a terraform command stopped at its timeout, naming the setting to raise."""
    where = f" in {source}" if source else " in the environment file"
    hint = None
    if action in {"plan", "apply", "destroy"} and working_dir is not None:
        hint = ("terraform was stopped; if it could not release the state lock, check that no other run is "
                f"going on and run `terraform force-unlock LOCK_ID` in {working_dir}")
    return TerraformTimeout(
        f"terraform {action} for {env_name} timed out after {timeout:g} s and was stopped "
        f"(the limit is terraform.timeouts.{action}{where})",
        hint=hint,
    )


def fmt_check(directory: Path, *, timeout: float | None = None, mirror: Path | None = PLUGIN_MIRROR) -> list[str]:
    """Files under `directory` that `terraform fmt` would change (empty when clean).

    Like every other call it runs with the orchestrator's own CLI config and TF_IN_AUTOMATION
    (written to a scratch directory: there is no environment state dir here).
    """
    limit = Timeouts().fmt if timeout is None else timeout
    mirror = mirror if mirror is not None and mirror.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="orchestrate-tf-") as scratch:
        env = prepare_environment(Path(scratch) / "terraformrc", default_plugin_cache(Path(scratch)), mirror)
        try:
            # no cwd: terraform prints the file names relative to the caller's directory
            result = run_command(fmt_check_argv(directory), env=env, timeout=limit, check=False)
        except CommandTimeout as exc:
            raise TerraformTimeout(f"terraform fmt -check {directory} timed out after {limit:g} s and was stopped") \
                from exc
        except CommandError as exc:
            raise TerraformError(f"terraform fmt failed: {exc.message}") from exc
    if result.returncode not in (0, 3):
        raise TerraformError(f"terraform fmt failed: {_strip_cli_noise(result.stderr)}")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]
