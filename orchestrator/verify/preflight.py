"""Pre-flight: the fast checks `up` and `provision` run before anything touches a host (environment
file, heal policy, the deployment model explored for the environment's own batches).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.fleet.provision import PreflightFailed
from orchestrator.models import process as process_model

# "environment" and "heal-policy" of PREFLIGHT_CHECKS register there
from orchestrator.verify import checks as _static_checks  # noqa: F401  (registers)
from orchestrator.verify.core import CHECKS, CheckResult, Outcome, VerifyContext, _run_one, check, failed, ok

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
