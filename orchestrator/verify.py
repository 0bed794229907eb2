"""`orchestrate verify ENV`: every static check, before anything touches a host.

Each check is a small function registered with `@check(name)` in `CHECKS`, in the order they
run. A check returns `ok(...)`, `failed(...)` or `skipped(...)`; it is skipped only when its
subject does not exist in the project (no playbooks yet, monitoring disabled, no plan to read),
and the reason says so. An error raised inside a check fails that check, not the run.

Terraform runs in a scratch copy of the environment's rendered root
(`.orchestrate/ENV/verify/terraform/`) with a local backend override, so verifying never
touches the environment's real state or backend. The one command run in the environment's own
root is the read-only `terraform graph -type=plan-destroy`, once that root was provisioned: the
destroy order is checked against what Terraform itself would destroy first.

`preflight(loaded)` runs the fast checks (PREFLIGHT_CHECKS) for `up`, right after rendering.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator import paths
from orchestrator.config import LoadedEnvironment, Project
from orchestrator.errors import CommandError, OrchestratorError, TerraformError, UsageError
from orchestrator.inventory import hosts_from_inventory, load_inventory
from orchestrator.models import graph as graph_model
from orchestrator.models import process as process_model
from orchestrator.provision import PreflightFailed, terraform_for
from orchestrator.render import module_source, render_environment
from orchestrator.tools.process import CommandResult, run_command, which
from orchestrator.tools.terraform import INIT_STAMP, Terraform, fmt_check

Status = Literal["ok", "failed", "skipped"]

ANSIBLE_LINT_PROFILE = "production"
#: terraform files the verify workspace writes next to the copied root
BACKEND_OVERRIDE = "zz_verify_backend_override.tf"
SAVED_PLAN_JSON = "plan.json"
SAVED_PLAN_FILE = "plan.tfplan"
#: how much may go wrong on one path of the deploy model, by fleet size (bigger fleets: fewer crashes)
MODEL_LIMITS_SMALL = process_model.Limits(max_faults=2, max_crashes=2)
MODEL_LIMITS_LARGE = process_model.Limits(max_faults=2, max_crashes=1)
MODEL_SMALL_FLEET = 4
#: the checks of `up`'s pre-flight (`preflight`), and how big a rollout it explores whole
PREFLIGHT_CHECKS = ("environment", "heal-policy", "deploy-model")
PREFLIGHT_MAX_HOSTS = 5
PREFLIGHT_MAX_BATCH = 3
PREFLIGHT_MODEL_LIMITS = process_model.Limits(max_faults=2, max_crashes=1)
PREFLIGHT_MARK = "preflight"
TIMEOUT_LINT = 900.0
TIMEOUT_SYNTAX = 120.0
TIMEOUT_VALIDATE = 300.0


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: name, ok/failed/skipped, a detail and the files it blames."""

    name: str
    status: Status
    detail: str = ""
    files: tuple[str, ...] = ()
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "files": list(self.files),
                "duration": round(self.duration, 2)}


@dataclass(frozen=True)
class Outcome:
    """What a check function returns (the runner adds the name and the duration)."""

    status: Status
    detail: str = ""
    files: tuple[str, ...] = ()


def ok(detail: str = "") -> Outcome:
    """A passed check, with what it covered."""
    return Outcome("ok", detail)


def failed(detail: str, files: Sequence[str] = ()) -> Outcome:
    """A failed check: what is wrong, and the project files to blame."""
    return Outcome("failed", detail, tuple(dict.fromkeys(files)))


def skipped(reason: str) -> Outcome:
    """A check whose subject does not exist in the project; `reason` says what is missing."""
    return Outcome("skipped", reason)


@dataclass(frozen=True)
class VerifyReport:
    """Every check's result for one environment."""

    env: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not fail the report)."""
        return all(c.status != "failed" for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "failed", "skipped")}
        return {"env": self.env, "ok": self.ok, "counts": counts, "checks": [c.to_json() for c in self.checks]}


# --- context shared by the checks ---------------------------------------------------------


@dataclass
class VerifyContext:
    """What checks read: the project, the environment (when it loaded), and cached work."""

    project_dir: Path
    env_name: str
    loaded: LoadedEnvironment | None = None
    load_error: str = ""
    _workspace: _Workspace | None = None
    _plan: dict[str, Any] | None = None
    _plan_source: str = ""
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> LoadedEnvironment:
        assert self.loaded is not None, "checks that need the environment run only when it loaded"
        return self.loaded

    def rel(self, path: Path | str) -> str:
        """`path` relative to the project directory when it is inside it."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.project_dir.resolve()))
        except ValueError:
            return str(p)

    @property
    def playbooks(self) -> list[Path]:
        directory = self.project_dir / "playbooks"
        return sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml"))

    @property
    def roles(self) -> list[Path]:
        directory = self.project_dir / "roles"
        return sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []

    def ansible_env(self) -> dict[str, str]:
        """Roles from the project, the venv's programs first on PATH, no colour, no retry files."""
        # ansible-lint runs ansible-playbook and ansible-config itself: they must be found on
        # PATH even when orchestrate was started by its full path without an activated venv.
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", os.defpath)]),
            "ANSIBLE_ROLES_PATH": str(self.project_dir / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "NO_COLOR": "1",
        }


def _program(name: str) -> str:
    """`name` on PATH or in the venv orchestrate runs from."""
    found = which(name)
    return str(found) if found is not None else name


CheckFunc = Callable[[VerifyContext], Outcome]


@dataclass(frozen=True)
class Check:
    """A registered check."""

    name: str
    description: str
    func: CheckFunc
    needs_env: bool = True


CHECKS: list[Check] = []


def check(name: str, description: str, *, needs_env: bool = True) -> Callable[[CheckFunc], CheckFunc]:
    """Register a check; checks run in registration order."""

    def register(func: CheckFunc) -> CheckFunc:
        CHECKS[:] = [c for c in CHECKS if c.name != name]
        CHECKS.append(Check(name, description, func, needs_env))
        return func

    return register


def check_names() -> list[str]:
    """Names of the registered checks, in the order they run."""
    return [c.name for c in CHECKS]


# --- the runner ---------------------------------------------------------------------------


def run_verify(project_dir: Path, env_name: str, *, only: Sequence[str] | None = None,
               on_result: Callable[[CheckResult], None] | None = None) -> VerifyReport:
    """Run the registered checks (or those named in `only`) for `env_name`.

    An unknown environment is a UsageError (exit 2); everything else, a broken environment
    file included, is reported as a failed check.
    """
    project = Project(project_dir)
    known = project.environment_names()
    if env_name not in known:
        raise UsageError(f"unknown environment {env_name!r}; known environments: {', '.join(known) or 'none'}")
    unknown = sorted(set(only or ()) - {c.name for c in CHECKS})
    if unknown:
        raise UsageError(f"unknown check(s) {', '.join(unknown)}; checks are: {', '.join(check_names())}")
    context = VerifyContext(project_dir=project_dir, env_name=env_name)
    try:
        context.loaded = project.load(env_name)
    except OrchestratorError as exc:
        context.load_error = exc.message
    selected = [c for c in CHECKS if only is None or c.name in only]
    results = []
    for registered in selected:
        result = _run_one(registered, context)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return VerifyReport(env=env_name, checks=results)


def _run_one(registered: Check, context: VerifyContext) -> CheckResult:
    started = time.monotonic()
    if registered.needs_env and context.loaded is None:
        outcome = skipped(f"the environment file did not load: {context.load_error}")
    else:
        try:
            outcome = registered.func(context)
        except OrchestratorError as exc:
            outcome = failed(exc.message + (f"\n{exc.output_tail}" if isinstance(exc, CommandError) else ""))
        except Exception as exc:  # a check that crashes fails; the others still run
            outcome = failed(f"internal error in check {registered.name}: {type(exc).__name__}: {exc}")
    return CheckResult(registered.name, outcome.status, outcome.detail.strip(), outcome.files,
                       time.monotonic() - started)


# --- environment --------------------------------------------------------------------------


@check("environment", "inventories/ENV/environment.yml loads and validates", needs_env=False)
def check_environment(ctx: VerifyContext) -> Outcome:
    """The environment file loaded (else its file:line: field error)."""
    if ctx.loaded is None:
        path = ctx.rel(Project(ctx.project_dir).environment_path(ctx.env_name))
        return failed(ctx.load_error, [path])
    env = ctx.loaded.env
    return ok(f"{ctx.rel(ctx.loaded.path)}: {env.target}, {env.terraform.module}, "
              f"{env.terraform.vars.app_count} app hosts, {env.rollout.strategy} rollout")


# --- terraform ----------------------------------------------------------------------------


@dataclass
class _Workspace:
    """A scratch copy of the rendered root (local backend), initialised once per verify run."""

    directory: Path
    terraform: Terraform
    module_dir: Path


def _module_dir(ctx: VerifyContext) -> Path:
    return ctx.project_dir / "terraform" / "modules" / ctx.env.env.terraform.module


def _workspace(ctx: VerifyContext) -> _Workspace:
    """Render the root, copy it into .orchestrate/ENV/verify/terraform with a local backend, init."""
    if ctx._workspace is not None:
        return ctx._workspace
    loaded = ctx.env
    rendered = render_environment(loaded)
    directory = loaded.paths.verify / "terraform"
    directory.mkdir(parents=True, exist_ok=True)
    module_dir = _module_dir(ctx)
    for path in rendered.files:
        text = path.read_text()
        if path.suffix == ".tf":
            # The copy sits elsewhere: point the module source at the module from here.
            text = text.replace(json.dumps(module_source(loaded, rendered.terraform_dir)),
                                json.dumps(os.path.relpath(module_dir, directory)))
        target = directory / path.name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    (directory / BACKEND_OVERRIDE).write_text(
        "# Written by orchestrate verify: the scratch copy never touches the environment's backend.\n"
        'terraform {\n  backend "local" {\n    path = "verify.tfstate"\n  }\n}\n')
    terraform = Terraform(directory, env_name=loaded.name, state_dir=loaded.paths.verify,
                          module_dirs=[module_dir])
    terraform.init()
    workspace = _Workspace(directory, terraform, module_dir)
    ctx._workspace = workspace
    return workspace


@check("terraform-fmt", "terraform fmt -check on terraform/modules and the rendered root")
def check_terraform_fmt(ctx: VerifyContext) -> Outcome:
    """Files `terraform fmt` would change, under terraform/modules and the rendered root."""
    modules = ctx.project_dir / "terraform" / "modules"
    rendered = render_environment(ctx.env).terraform_dir
    unformatted: list[str] = []
    checked = []
    for directory in (modules, rendered):
        if directory.is_dir():
            checked.append(ctx.rel(directory))
            # terraform prints the names relative to its working directory (ours)
            unformatted += [ctx.rel(Path.cwd() / name) for name in fmt_check(directory)]
    if unformatted:
        return failed("not formatted (run `terraform fmt -recursive`): " + ", ".join(unformatted), unformatted)
    return ok("formatted: " + ", ".join(checked))


def _diagnostic_line(ctx: VerifyContext, workspace: _Workspace, diag: dict[str, Any]) -> tuple[str, str]:
    """`file:line: severity: summary: detail` for a `validate -json` diagnostic, and the file."""
    where = diag.get("range") or {}
    filename = str(where.get("filename", ""))
    path = ctx.rel((workspace.directory / filename).resolve()) if filename else ""
    line = (where.get("start") or {}).get("line")
    location = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
    detail = f" {diag.get('detail')}" if diag.get("detail") else ""
    return f"{location}{diag.get('severity', 'error')}: {diag.get('summary', '')}.{detail}", path


@check("terraform-validate", "terraform validate of the rendered root and the module it calls")
def check_terraform_validate(ctx: VerifyContext) -> Outcome:
    """`terraform validate -json` in the scratch workspace; errors as file:line."""
    module_dir = _module_dir(ctx)
    if not module_dir.is_dir():
        return failed(f"{ctx.rel(module_dir)} does not exist (terraform.module in the environment file)",
                      [ctx.rel(ctx.env.path)])
    workspace = _workspace(ctx)
    result = run_command(["terraform", "validate", "-json", "-no-color"], cwd=workspace.directory,
                         env=workspace.terraform.environment(), timeout=TIMEOUT_VALIDATE, check=False)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        return failed(f"terraform validate exited with {result.returncode}: {result.stderr.strip()}")
    diagnostics = data.get("diagnostics") or []
    errors = [_diagnostic_line(ctx, workspace, d) for d in diagnostics if d.get("severity") == "error"]
    if not data.get("valid", False) or errors:
        return failed("\n".join(line for line, _ in errors) or "terraform validate: invalid",
                      [f for _, f in errors if f])
    warnings = [d for d in diagnostics if d.get("severity") == "warning"]
    suffix = f" ({len(warnings)} warning(s))" if warnings else ""
    return ok(f"valid: root of {ctx.env_name} and {ctx.rel(module_dir)}{suffix}")


# --- ansible ------------------------------------------------------------------------------


@check("ansible-syntax", "ansible-playbook --syntax-check on playbooks/*.yml", needs_env=False)
def check_ansible_syntax(ctx: VerifyContext) -> Outcome:
    """Every playbook passes `--syntax-check` (skipped without playbooks)."""
    playbooks = ctx.playbooks
    if not playbooks:
        return skipped("no playbooks/*.yml in the project")
    directories = [p for p in (ctx.project_dir / "playbooks", ctx.project_dir / "roles") if p.is_dir()]
    cache_key = _content_key(ctx, "syntax-check", directories)
    remembered = _remembered(ctx, "ansible-syntax", cache_key)
    if remembered:
        return ok(remembered + " (unchanged since the last clean run)")

    def syntax_check(paths: Sequence[Path]) -> CommandResult:
        argv = [_program("ansible-playbook"), "--syntax-check", "-i", "localhost,", *map(str, paths)]
        return run_command(argv, cwd=ctx.project_dir, env=ctx.ansible_env(), timeout=TIMEOUT_SYNTAX, check=False)

    # One ansible-playbook for all (it costs seconds to start); one per playbook only to say
    # which of them failed.
    if syntax_check(playbooks).returncode == 0:
        message = f"{len(playbooks)} playbook(s): " + ", ".join(p.name for p in playbooks)
        _remember(ctx, "ansible-syntax", cache_key, message)
        return ok(message)
    problems = []
    files = []
    for playbook in playbooks:
        result = syntax_check([playbook])
        if result.returncode != 0:
            errors = [line.strip() for line in (result.stderr + result.stdout).splitlines()
                      if "ERROR" in line or "error" in line.lower()]
            problems.append(f"{ctx.rel(playbook)}: " + (" ".join(errors[:3]) or f"exit {result.returncode}"))
            files.append(ctx.rel(playbook))
    return failed("\n".join(problems) or "ansible-playbook --syntax-check failed", files)


_LINT_LINE = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+)(?::\d+)?: (?P<rule>[\w\[\]\-]+):? (?P<message>.*)$")


def _content_key(ctx: VerifyContext, purpose: str, paths: Sequence[Path]) -> str:
    """Hash of what a result depends on: the files under `paths`, ansible config and the tools."""
    digest = hashlib.sha256(purpose.encode() + b"\0" + ANSIBLE_LINT_PROFILE.encode())
    for tool in ("ansible-lint", "ansible-playbook"):
        found = which(tool)
        digest.update(str(found).encode() + (str(found.stat().st_mtime).encode() if found else b""))
    extra = [ctx.project_dir / name for name in (".ansible-lint", "ansible.cfg", ".yamllint")]
    for base in [*paths, *(p for p in extra if p.exists())]:
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            digest.update(ctx.rel(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _cache_dir(ctx: VerifyContext) -> Path:
    # Ansible results do not depend on the environment: clean results are remembered per
    # content for every environment of the project (generated state, git-ignored).
    return paths.verify_cache(ctx.project_dir)


def _remembered(ctx: VerifyContext, name: str, key: str) -> str:
    stamp = _cache_dir(ctx) / f"{name}-{key[:32]}.ok"
    return stamp.read_text().strip() if stamp.is_file() else ""


def _remember(ctx: VerifyContext, name: str, key: str, message: str) -> None:
    directory = _cache_dir(ctx)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(f"{name}-*.ok"):
        old.unlink(missing_ok=True)
    (directory / f"{name}-{key[:32]}.ok").write_text(message + "\n")


@check("ansible-lint", "ansible-lint --profile production on playbooks and roles", needs_env=False)
def check_ansible_lint(ctx: VerifyContext) -> Outcome:
    """ansible-lint, production profile, over playbooks/ and roles/ (skipped without either)."""
    targets = [p for p in (ctx.project_dir / "playbooks", ctx.project_dir / "roles") if p.is_dir()]
    if not targets or not (ctx.playbooks or ctx.roles):
        return skipped("no playbooks/ or roles/ in the project")
    key = _content_key(ctx, "ansible-lint", targets)
    remembered = _remembered(ctx, "ansible-lint", key)
    if remembered:
        return ok(remembered + " (unchanged since the last clean run)")
    argv = [_program("ansible-lint"), "--profile", ANSIBLE_LINT_PROFILE, "--offline", "--nocolor", "--format", "pep8",
            *[ctx.rel(t) for t in targets]]
    result = run_command(argv, cwd=ctx.project_dir, env=ctx.ansible_env(), timeout=TIMEOUT_LINT, check=False)
    violations = []
    files = []
    for line in result.stdout.splitlines():
        match = _LINT_LINE.match(line.strip())
        if match:
            violations.append(line.strip())
            files.append(match.group("file"))
    if result.returncode != 0:
        summary = [line.strip() for line in result.stderr.splitlines() if "Failed" in line or "ERROR" in line]
        detail = "\n".join(violations or summary or [f"ansible-lint exited with {result.returncode}"])
        return failed(detail, files)
    message = f"{ANSIBLE_LINT_PROFILE} profile: no violations in {', '.join(ctx.rel(t) for t in targets)}"
    _remember(ctx, "ansible-lint", key, message)
    return ok(message)


# --- monitoring ---------------------------------------------------------------------------


def _monitoring_report(ctx: VerifyContext) -> Any:
    if "monitoring" not in ctx.cache:
        from orchestrator import monitoring

        ctx.cache["monitoring"] = monitoring.verify_monitoring(ctx.env)
    return ctx.cache["monitoring"]


def _monitoring_available() -> bool:
    try:
        from orchestrator import monitoring
    except ImportError:
        return False
    return hasattr(monitoring, "verify_monitoring") and hasattr(monitoring, "check_heal_policy")


@check("monitoring", "promtool check config/rules, promtool test rules, amtool check-config and routes")
def check_monitoring(ctx: VerifyContext) -> Outcome:
    """promtool and amtool on the monitoring files rendered for this environment."""
    if not ctx.env.env.monitoring.enabled:
        return skipped("monitoring.enabled is false for this environment")
    if not _monitoring_available():
        return skipped("orchestrator/monitoring.py has no verify_monitoring yet")
    report = _monitoring_report(ctx)
    checks = [c for c in report.checks if c.name != "heal policy"]
    bad = [c for c in checks if not c.ok]
    if bad:
        lines = [f"{c.name} ({c.command}): {c.detail}" for c in bad]
        files = sorted({m for c in bad for m in re.findall(r"[\w./-]+\.ya?ml", c.detail + " " + c.command)})
        return failed("\n".join(lines), files)
    return ok(f"{len(checks)} checks passed: " + ", ".join(sorted({c.name.split(' ->')[0] for c in checks})))


@check("heal-policy", "every alert's remediation exists and the throttle covers its `for`")
def check_heal_policy(ctx: VerifyContext) -> Outcome:
    """The static heal-policy check of orchestrator.monitoring."""
    if not ctx.env.env.healing.enabled:
        return skipped("healing.enabled is false for this environment")
    if not _monitoring_available():
        return skipped("orchestrator/monitoring.py has no check_heal_policy yet")
    from orchestrator import monitoring

    problems = monitoring.check_heal_policy(ctx.env)
    if problems:
        return failed("\n".join(f"alert {p.rule}: {p.message}" for p in problems), [ctx.rel(ctx.env.path)])
    rules = monitoring.alert_rules(ctx.env.env)
    return ok(f"{len(rules)} alert rule(s): " + ", ".join(f"{r.name}->{r.remediation}" for r in rules))


# --- the resource graph -------------------------------------------------------------------


def saved_plan_json(loaded: LoadedEnvironment) -> Path | None:
    """.orchestrate/ENV/terraform/plan.json when present and not older than the saved plan file."""
    directory = loaded.paths.terraform
    saved = directory / SAVED_PLAN_JSON
    plan_file = directory / SAVED_PLAN_FILE
    if saved.is_file() and (not plan_file.exists() or saved.stat().st_mtime >= plan_file.stat().st_mtime):
        return saved
    return None


GRAPH_PLAN_FILE = "graph.tfplan"


def environment_plan(ctx: VerifyContext, *, remote_plan: bool = False) -> tuple[dict[str, Any], str] | None:
    """The env's plan JSON and where it came from; None when none can be had cheaply.

    In order: the saved plan JSON, `terraform show -json` of the saved plan file, for the
    local target (no provider, no credentials) a fresh plan in the scratch workspace, and with
    `remote_plan` a plan of the environment's own root into graph.tfplan (which needs the
    backend and the provider's credentials; the reviewed plan.tfplan is left alone).
    """
    if ctx._plan is not None:
        return ctx._plan, ctx._plan_source
    loaded = ctx.env
    found: tuple[dict[str, Any], str] | None = None
    saved = saved_plan_json(loaded)
    plan_file = loaded.paths.terraform / SAVED_PLAN_FILE
    if saved is not None:
        found = json.loads(saved.read_text()), ctx.rel(saved)
    elif plan_file.is_file():
        found = terraform_for(loaded).show_plan(plan_file), ctx.rel(plan_file)
    elif loaded.env.target == "local":
        workspace = _workspace(ctx)
        scratch = workspace.directory / "verify.tfplan"
        workspace.terraform.plan(scratch)
        found = workspace.terraform.show_plan(scratch), f"a scratch plan in {ctx.rel(workspace.directory)}"
    elif remote_plan:
        terraform = terraform_for(loaded)
        terraform.init()
        graph_plan = terraform.working_dir / GRAPH_PLAN_FILE
        terraform.plan(graph_plan)
        found = terraform.show_plan(graph_plan), ctx.rel(graph_plan)
    if found is not None:
        ctx._plan, ctx._plan_source = found
    return found


DESTROY_GRAPH_ARGV = ("terraform", "graph", "-type=plan-destroy")


def terraform_destroy_graph(ctx: VerifyContext) -> tuple[graph_model.DestroyGraph | None, str]:
    """Terraform's own destroy graph of the environment's root and where it came from, or None
    and why there is none.

    `terraform graph -type=plan-destroy` draws one destroy node per resource in the state (read
    through the root's backend: the S3 one needs the provider's credentials), so it is asked
    only of a root that provisioning initialised for exactly these files and, for the local
    backend, that has a state file. It only reads: nothing is initialised, planned or locked.
    """
    if "destroy-graph" in ctx.cache:
        cached: tuple[graph_model.DestroyGraph | None, str] = ctx.cache["destroy-graph"]
        return cached
    loaded = ctx.env
    terraform = terraform_for(loaded)
    root = terraform.working_dir
    stamp = root / ".terraform" / INIT_STAMP
    found: tuple[graph_model.DestroyGraph | None, str]
    if not stamp.is_file() or (loaded.env.target == "local" and not (root / "terraform.tfstate").is_file()):
        found = None, "nothing provisioned yet, so terraform has nothing to destroy"
    elif stamp.read_text().strip() != terraform.init_stamp():
        found = None, (f"{ctx.rel(root)} changed since it was last initialised: run `orchestrate plan "
                       f"{ctx.env_name}` first")
    else:
        result = run_command(list(DESTROY_GRAPH_ARGV), cwd=root, env=terraform.environment(),
                             timeout=TIMEOUT_VALIDATE, check=False)
        source = f"{' '.join(DESTROY_GRAPH_ARGV[1:])} in {ctx.rel(root)}"
        if result.returncode != 0:
            # e.g. an S3 backend without credentials here: the comparison is not made, and says why
            reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            found = None, f"{source} exited {result.returncode}: {reason[0][:200]}"
        else:
            destroy = graph_model.parse_destroy_graph(result.stdout)
            found = (destroy, source) if destroy.nodes else (None, f"no resources in the state ({source})")
    ctx.cache["destroy-graph"] = found
    return found


def _destroy_summary(report: graph_model.GraphReport, why_not: str) -> str:
    """What the destroy-order comparison covered, for a check's detail."""
    comparison = report.terraform_destroy
    if comparison is None:
        return f"destroy order not compared with terraform's destroy graph: {why_not}"
    missing = f"; not in state: {', '.join(comparison.not_in_state)}" if comparison.not_in_state else ""
    return (f"terraform destroys dependents first on all {comparison.edges_checked} dependency edge(s) among "
            f"{comparison.resources_compared} resource(s) ({comparison.source}){missing}")


@dataclass(frozen=True)
class GraphOutcome:
    """The environment's joined resource + stage graph, its checks, and where the plan came from."""

    env: str
    source: str
    graph: Any
    report: graph_model.GraphReport


def environment_graph(project_dir: Path, env_name: str) -> GraphOutcome:
    """Build the joined graph of `env_name` (planning when no plan is saved) and check it."""
    ctx = VerifyContext(project_dir=project_dir, env_name=env_name, loaded=Project(project_dir).load(env_name))
    found = environment_plan(ctx, remote_plan=True)
    if found is None:  # pragma: no cover - remote_plan always yields a plan or raises
        raise TerraformError(f"no plan for {env_name}")
    plan, source = found
    build = graph_model.resource_graph(plan)
    groups: dict[str, list[str]] = {}
    inventory = ctx.env.paths.inventory
    for host in hosts_from_inventory(load_inventory(inventory)):
        for group in host.groups:
            groups.setdefault(group, []).append(host.name)
    joined = graph_model.pipeline_graph(build.graph, groups)
    destroy, destroy_source = terraform_destroy_graph(ctx)
    report = graph_model.check_plan(plan, terraform_destroy=destroy, destroy_source=destroy_source)
    return GraphOutcome(env=env_name, source=source, graph=joined, report=report)


@check("resource-graph", "resource DAG: references resolve, no cycle, terraform's destroy graph destroys "
                         "dependents first")
def check_resource_graph(ctx: VerifyContext) -> Outcome:
    """Graph checks on the environment's plan JSON (skipped when no plan can be had cheaply),
    and the destroy order against terraform's own destroy graph once the root has state."""
    found = environment_plan(ctx)
    if found is None:
        return skipped(f"no saved plan for {ctx.env_name} (target {ctx.env.env.target} needs credentials to "
                       f"plan): run `orchestrate plan {ctx.env_name}` first")
    plan, source = found
    report = graph_model.check_plan(plan)
    why_not = "the graph itself is broken"
    if report.ok:
        destroy, why_not = terraform_destroy_graph(ctx)
        if destroy is not None:
            report = graph_model.check_plan(plan, terraform_destroy=destroy, destroy_source=why_not)
    if not report.ok:
        return failed("\n".join(str(p) for p in report.problems))
    opaque = f"; not followed (locals): {', '.join(report.opaque_references)}" if report.opaque_references else ""
    return ok(f"from {source}: {report.resources} resources, {report.edges} edges, acyclic, every reference "
              f"resolves, destroy order {' -> '.join(report.destroy_order[:4])}"
              f"{' ...' if len(report.destroy_order) > 4 else ''}; {_destroy_summary(report, why_not)}{opaque}")


# --- the deployment state machine ---------------------------------------------------------


def environment_batches(loaded: LoadedEnvironment) -> list[list[str]]:
    """The env's rollout batches over placeholder app host names app-1..app-N."""
    env = loaded.env
    hosts = [f"app-{i + 1}" for i in range(env.terraform.vars.app_count)]
    canary = env.rollout.canary_hosts if env.rollout.host_strategy == "canary" else 0
    return process_model.plan_batches(hosts, env.rollout.batch_size, canary_hosts=canary)


def model_limits(batches: Sequence[Sequence[str]]) -> process_model.Limits:
    """Fault and crash budget per path for a fleet of this size (bigger: fewer crashes)."""
    hosts = sum(len(b) for b in batches)
    return MODEL_LIMITS_SMALL if hosts <= MODEL_SMALL_FLEET else MODEL_LIMITS_LARGE


def _shape(batches: Sequence[Sequence[str]]) -> str:
    return " + ".join(str(len(b)) for b in batches)


def preflight_batches(batches: Sequence[Sequence[str]]) -> tuple[list[list[str]], process_model.Limits, bool]:
    """What the pre-flight explores for a rollout: the batches themselves when the fleet is small
    (the exploration grows steeply with the hosts per batch), else the rollout's shape cut down
    to its first, second and last batch of at most two hosts each (canary first stays first),
    with one controller death per path. The flag says whether it is the whole rollout."""
    hosts = sum(len(b) for b in batches)
    if hosts <= PREFLIGHT_MAX_HOSTS and max((len(b) for b in batches), default=0) <= PREFLIGHT_MAX_BATCH:
        return [list(b) for b in batches], model_limits(batches), True
    kept = list(batches) if len(batches) <= 3 else [batches[0], batches[1], batches[-1]]
    return [list(b[:2]) for b in kept], PREFLIGHT_MODEL_LIMITS, False


@check("deploy-model", "exhaustive check of the rolling deploy with this rollout: every failure and crash")
def check_deploy_model(ctx: VerifyContext) -> Outcome:
    """Exhaustive exploration of the deploy algorithm with this environment's batches."""
    batches = environment_batches(ctx.env)
    limits = model_limits(batches)
    note = ""
    if ctx.cache.get(PREFLIGHT_MARK):
        explored, limits, whole = preflight_batches(batches)
        if not whole:
            note = (f" (pre-flight: this rollout's shape cut down from {_shape(batches)}; "
                    f"`orchestrate verify {ctx.env_name}` explores all of it)")
        batches = explored
    try:
        result = process_model.explore(batches, limits=limits)
    except process_model.ModelViolation as violation:
        return failed(str(violation))
    return ok(f"batches {_shape(batches)}: {result.paths} paths ({result.states} states) with up to "
              f"{limits.max_faults} failures and {limits.max_crashes} controller deaths each; every host ends on "
              f"a release that passed its health gate, the fleet on one release{note}")


# --- the pre-flight of `up` -----------------------------------------------------------------


def preflight(loaded: LoadedEnvironment) -> list[CheckResult]:
    """The fast checks `up` runs right after rendering, before anything touches a host.

    The environment file, the heal policy and the deploy model on this environment's batches
    (PREFLIGHT_CHECKS; well under 2 s together, unlike terraform validate or ansible-lint,
    which are left to `orchestrate verify`). Raises PreflightFailed (exit 2) naming every
    failed check; returns the results otherwise.
    """
    ctx = VerifyContext(project_dir=loaded.project_dir, env_name=loaded.name, loaded=loaded)
    ctx.cache[PREFLIGHT_MARK] = True
    results = [_run_one(c, ctx) for c in CHECKS if c.name in PREFLIGHT_CHECKS]
    bad = [r for r in results if r.status == "failed"]
    if bad:
        raise PreflightFailed(
            f"pre-flight of {loaded.name} failed, nothing was touched: "
            + "; ".join(f"{r.name}: {' '.join(r.detail.split())}" for r in bad),
            hint=f"`orchestrate verify {loaded.name}` runs every check with a per-check report",
        )
    return results
