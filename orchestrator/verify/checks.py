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

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.config.loader import Project
from orchestrator.fleet.render import render_environment
from orchestrator.monitoring.checks import check_heal_policy as policy_problems
from orchestrator.monitoring.checks import verify_monitoring
from orchestrator.monitoring.rules import alert_rules
from orchestrator.tools import ansible_checks
from orchestrator.tools.clean_results import ResultKey, remember, remembered
from orchestrator.tools.process import which
from orchestrator.tools.terraform import Diagnostic, fmt_check
from orchestrator.verify.core import Outcome, VerifyContext, _Workspace, check, failed, ok, skipped
from orchestrator.verify.workspace import _module_dir, _workspace

ANSIBLE_LINT_PROFILE = "production"


@check("environment", "inventories/ENV/environment.yml loads and validates", needs_env=False)
def check_environment(ctx: VerifyContext) -> Outcome:
    """The environment file loaded (else its file:line: field error)."""
    if ctx.loaded is None:
        path = ctx.rel(Project(ctx.project_dir).environment_path(ctx.env_name))
        return failed(ctx.load_error, [path])
    env = ctx.loaded.env
    return ok(f"{ctx.rel(ctx.loaded.path)}: {env.target}, {env.terraform.module}, "
              f"{env.terraform.vars.app_count} app hosts, {env.rollout.strategy} rollout")


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


def _diagnostic_line(ctx: VerifyContext, workspace: _Workspace, diag: Diagnostic) -> tuple[str, str]:
    """`file:line: severity: summary: detail` for a `validate -json` diagnostic, and the file."""
    path = ctx.rel((workspace.directory / diag.filename).resolve()) if diag.filename else ""
    location = f"{path}:{diag.line}: " if path and diag.line else (f"{path}: " if path else "")
    detail = f" {diag.detail}" if diag.detail else ""
    return f"{location}{diag.severity}: {diag.summary}.{detail}", path


@check("terraform-validate", "terraform validate of the rendered root and the module it calls")
def check_terraform_validate(ctx: VerifyContext) -> Outcome:
    """`terraform validate -json` in the scratch workspace; errors as file:line."""
    module_dir = _module_dir(ctx)
    if not module_dir.is_dir():
        return failed(f"{ctx.rel(module_dir)} does not exist (terraform.module in the environment file)",
                      [ctx.rel(ctx.env.path)])
    workspace = _workspace(ctx)
    diagnostics = workspace.terraform.validate()
    errors = [_diagnostic_line(ctx, workspace, d) for d in diagnostics if d.severity == "error"]
    if errors:
        return failed("\n".join(line for line, _ in errors), [f for _, f in errors if f])
    warnings = [d for d in diagnostics if d.severity == "warning"]
    suffix = f" ({len(warnings)} warning(s))" if warnings else ""
    return ok(f"valid: root of {ctx.env_name} and {ctx.rel(module_dir)}{suffix}")


@check("ansible-syntax", "ansible-playbook --syntax-check on playbooks/*.yml", needs_env=False)
def check_ansible_syntax(ctx: VerifyContext) -> Outcome:
    """Every playbook passes `--syntax-check` (skipped without playbooks)."""
    playbooks = ctx.playbooks
    if not playbooks:
        return skipped("no playbooks/*.yml in the project")
    directories = [p for p in (ctx.project_dir / "playbooks", ctx.project_dir / "roles") if p.is_dir()]
    cache_key = _content_key(ctx, "syntax-check", directories)
    seen = remembered("ansible-syntax", cache_key)
    if seen:
        return ok(seen + " (unchanged since the last clean run)")

    def syntax_check(paths: Sequence[Path]) -> ansible_checks.SyntaxCheck:
        return ansible_checks.syntax_check(paths, cwd=ctx.project_dir, env=ctx.ansible_env())

    # One ansible-playbook for all (it costs seconds to start); one per playbook only to say
    # which of them failed.
    if syntax_check(playbooks).ok:
        message = f"{len(playbooks)} playbook(s): " + ", ".join(p.name for p in playbooks)
        remember("ansible-syntax", cache_key, message)
        return ok(message)
    problems = []
    files = []
    for playbook in playbooks:
        result = syntax_check([playbook])
        if not result.ok:
            problems.append(f"{ctx.rel(playbook)}: " + (" ".join(result.errors[:3]) or f"exit {result.returncode}"))
            files.append(ctx.rel(playbook))
    return failed("\n".join(problems) or "ansible-playbook --syntax-check failed", files)


def _content_key(ctx: VerifyContext, purpose: str, paths: Sequence[Path]) -> str:
    """Hash of what a result depends on: the files under `paths`, ansible config and the tools.

    Ansible results depend on the files checked and the tools, not on the environment or where the
    project lives: clean results are shared by every checkout and copy of the project (a release
    gate lints the roles on every `up`)."""
    key = ResultKey(purpose).text(ANSIBLE_LINT_PROFILE)
    for tool in (ansible_checks.ANSIBLE_LINT, ansible_checks.ANSIBLE_PLAYBOOK):
        key.tool(which(tool))
    extra = [ctx.project_dir / name for name in (".ansible-lint", "ansible.cfg", ".yamllint")]
    for base in [*paths, *(p for p in extra if p.exists())]:
        key.tree(base, ctx.project_dir)
    return key.hexdigest()


@check("ansible-lint", "ansible-lint --profile production on playbooks and roles", needs_env=False)
def check_ansible_lint(ctx: VerifyContext) -> Outcome:
    """ansible-lint, production profile, over playbooks/ and roles/ (skipped without either)."""
    targets = [p for p in (ctx.project_dir / "playbooks", ctx.project_dir / "roles") if p.is_dir()]
    if not targets or not (ctx.playbooks or ctx.roles):
        return skipped("no playbooks/ or roles/ in the project")
    key = _content_key(ctx, "ansible-lint", targets)
    seen = remembered("ansible-lint", key)
    if seen:
        return ok(seen + " (unchanged since the last clean run)")
    result = ansible_checks.lint([ctx.rel(t) for t in targets], profile=ANSIBLE_LINT_PROFILE, cwd=ctx.project_dir,
                                 env=ctx.ansible_env())
    if not result.ok:
        lines = [v.text for v in result.violations] or result.failure_lines
        detail = "\n".join(lines or [f"ansible-lint exited with {result.returncode}"])
        return failed(detail, [v.file for v in result.violations])
    message = f"{ANSIBLE_LINT_PROFILE} profile: no violations in {', '.join(ctx.rel(t) for t in targets)}"
    remember("ansible-lint", key, message)
    return ok(message)


def _monitoring_report(ctx: VerifyContext) -> Any:
    if "monitoring" not in ctx.cache:
        ctx.cache["monitoring"] = verify_monitoring(ctx.env)
    return ctx.cache["monitoring"]


@check("monitoring", "promtool check config/rules, promtool test rules, amtool check-config and routes")
def check_monitoring(ctx: VerifyContext) -> Outcome:
    """promtool and amtool on the monitoring files rendered for this environment."""
    if not ctx.env.env.monitoring.enabled:
        return skipped("monitoring.enabled is false for this environment")
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
    """The static heal-policy check of orchestrator.monitoring.checks."""
    if not ctx.env.env.healing.enabled:
        return skipped("healing.enabled is false for this environment")
    problems = policy_problems(ctx.env)
    if problems:
        return failed("\n".join(f"alert {p.rule}: {p.message}" for p in problems), [ctx.rel(ctx.env.path)])
    rules = alert_rules(ctx.env.env)
    return ok(f"{len(rules)} alert rule(s): " + ", ".join(f"{r.name}->{r.remediation}" for r in rules))
