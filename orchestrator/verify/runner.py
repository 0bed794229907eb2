"""Run the registered checks of `orchestrate verify` for an environment (all, or the ones named)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.config.loader import Project
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.fleet.local.network import ensure_network

# the check modules register their checks on import
from orchestrator.verify import checkov, checks, graph, preflight
from orchestrator.verify.core import CHECKS, Check, CheckResult, VerifyContext, VerifyReport, _run_one

#: the modules' checks run in this order (static checks, checkov, the resource graph, the deploy
#: model), each module's in the order it registers them, whichever module was imported first
MODULE_ORDER = (checks.__name__, checkov.__name__, graph.__name__, preflight.__name__)


def ordered_checks() -> list[Check]:
    """The registered checks in the order they run."""
    def rank(item: tuple[int, Check]) -> tuple[int, int]:
        index, registered = item
        module = registered.func.__module__
        return (MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER), index)

    return [c for _, c in sorted(enumerate(CHECKS), key=rank)]


def check_names() -> list[str]:
    """Names of the registered checks, in the order they run."""
    return [c.name for c in ordered_checks()]


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
        # verify renders the fleet: a local fleet without a subnet in its env file gets its
        # default here, once, so that every check sees the same one
        context.loaded = ensure_network(project.load(env_name))
    except OrchestratorError as exc:
        context.load_error = exc.message
    selected = [c for c in ordered_checks() if only is None or c.name in only]
    results = []
    for registered in selected:
        result = _run_one(registered, context)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return VerifyReport(env=env_name, checks=results)


