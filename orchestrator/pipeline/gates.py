"""The release gates: what a release must pass before any host changes.

    cargo-fmt cargo-clippy cargo-test      a cargo project given as --release: `cargo fmt --check`,
                                           `cargo clippy --all-targets -- -D warnings`, `cargo test`
                                           (offline, as a release build)
    terraform-fmt terraform-validate       terraform/modules and the environment's rendered root
    checkov                                the rendered root (accepted findings: terraform/checkov-skips.yml)
    ansible-lint                           roles/ and playbooks/, production profile
    promtool                               the rendered alert rules, their tests, Prometheus' configuration

`orchestrate up` runs them as its step `gates` (after build and render, before provision);
`orchestrate check ENV [--release PATH]` runs them alone, as a journalled run `check`. Every gate runs
(one failure does not hide the next one's findings); when any failed, the release is refused with
GatesFailed (exit 1) listing the findings, before anything reached a host. Each gate's status, tool
version, duration and findings go to the journal step and to `--json` (`gates`).

`--skip-gate NAME --reason TEXT` passes a gate over: refused for a protected environment (exit 2),
recorded in the audit log with who and why, and shown as skipped (with both) in the journal.

The infrastructure gates are the registered checks of `orchestrate verify` (orchestrator.verify) of
the same names; promtool's is orchestrator.monitoring.checks'.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import CommandError, OrchestratorError, UsageError
from orchestrator.runs.identity import ProcessIdentity
from orchestrator.runs.journal import StepHandle
from orchestrator.tools import cargo
from orchestrator.tools.process import tail
from orchestrator.tools.versions import program_version, remembered_version

if TYPE_CHECKING:
    from orchestrator.verify.core import VerifyContext

#: every gate, in the order they run
GATES = ("cargo-fmt", "cargo-clippy", "cargo-test", "terraform-fmt", "terraform-validate", "checkov",
         "ansible-lint", "promtool")

CARGO_GATES = GATES[:3]

#: findings listed per gate in an error message (the journal and --json keep all of them)
SHOWN_FINDINGS = 20

Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict."""

    name: str
    status: Status
    seconds: float = 0.0
    findings: tuple[str, ...] = ()
    version: str | None = None
    """The tool that judged, as it names itself (`clippy 0.1.95 (...)`, `Terraform v1.11.4`)."""
    detail: str = ""
    """What passed, or why the gate was skipped."""
    skipped_by: dict[str, str] | None = None
    """{"who", "reason"} when an operator skipped it with --skip-gate."""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2),
                                "findings": list(self.findings), "version": self.version, "detail": self.detail}
        if self.skipped_by is not None:
            data["skipped_by"] = dict(self.skipped_by)
        return data


@dataclass(frozen=True)
class GateRequest:
    """Which release to gate, and the gates an operator skips (with the reason)."""

    release_path: Path | str | None = None
    skip: tuple[str, ...] = ()
    reason: str = ""


@dataclass
class GateReport:
    """Every gate's result for one environment."""

    env: str
    gates: list[GateResult]
    release_path: str | None = None
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return all(g.status != "failed" for g in self.gates)

    @property
    def failures(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "ok": self.ok, "release_path": self.release_path, "run_id": self.run_id,
                "gates": [g.as_dict() for g in self.gates]}


class GatesFailed(OrchestratorError):
    """A gate failed: the release is refused before any host changed (exit 1); `result` is the report."""

    def __init__(self, report: GateReport) -> None:
        names = ", ".join(g.name for g in report.failures)
        lines = []
        for gate in report.failures:
            lines.append(f"{gate.name}:")
            lines += [f"  {finding}" for finding in gate.findings[:SHOWN_FINDINGS]]
            if len(gate.findings) > SHOWN_FINDINGS:
                lines.append(f"  ... and {len(gate.findings) - SHOWN_FINDINGS} more (see --json or the journal)")
        super().__init__(f"release refused by the gates of {report.env} ({names} failed); nothing changed on "
                         "any host", hint="\n".join(lines) or None)
        self.result = report


def check_skips(loaded: LoadedEnvironment, request: GateRequest) -> None:
    """Refuse (UsageError, exit 2) an unknown gate name, a skip without --reason or a reason without
    a skip, and any skip for a protected environment; before anything runs."""
    unknown = sorted(set(request.skip) - set(GATES))
    if unknown:
        raise UsageError(f"--skip-gate {unknown[0]}: no such gate; the gates are {', '.join(GATES)}")
    if request.skip and not request.reason.strip():
        raise UsageError("--skip-gate needs --reason TEXT: the audit log records who skipped which gate and why")
    if request.reason and not request.skip:
        raise UsageError("--reason is the reason for a --skip-gate; name the gate to skip")
    if request.skip and loaded.env.protected:
        raise UsageError(f"environment {loaded.name!r} is protected: its release gates cannot be skipped "
                         f"(--skip-gate {', '.join(request.skip)})",
                         hint="fix the findings, or accept a checkov finding in terraform/checkov-skips.yml "
                              "with its reason")


def record_skips(loaded: LoadedEnvironment, request: GateRequest, *, command: str, run_id: str | None,
                 argv: Sequence[str]) -> dict[str, Any] | None:
    """Write the skipped gates (who, why) to the audit log; what the journal step records of them."""
    if not request.skip:
        return None
    from orchestrator.runs.audit import AuditLog

    who = ProcessIdentity.current()
    skipped = sorted(set(request.skip), key=GATES.index)
    with AuditLog(loaded.state_dir, env=loaded.name) as audit:
        audit.record(command=f"{command} skip-gate", outcome="skipped", run_id=run_id,
                     details={"gates": skipped, "reason": request.reason, "argv": list(argv)})
    return {"gates": skipped, "reason": request.reason, "who": who.describe()}


# --- the gates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    status: Status
    findings: tuple[str, ...] = ()
    detail: str = ""


def _failed(findings: Sequence[str], fallback: str) -> _Verdict:
    return _Verdict("failed", tuple(findings) or tuple(line for line in tail(fallback, 20).splitlines() if line))


@dataclass
class _Context:
    loaded: LoadedEnvironment
    project: Path | None
    """The cargo project to gate (None: the release is no cargo project)."""
    no_project: str
    """Why the cargo gates do not apply, when `project` is None."""
    verify: VerifyContext | None = None
    """The context the verify checks share (their scratch Terraform workspace, checkov's version)."""
    versions: dict[str, str] = field(default_factory=dict)

    def verify_context(self) -> VerifyContext:
        if self.verify is None:
            from orchestrator.verify.core import VerifyContext

            self.verify = VerifyContext(project_dir=self.loaded.project_dir, env_name=self.loaded.name,
                                        loaded=self.loaded)
        return self.verify


def _cargo_project(given: Path | str | None) -> tuple[Path | None, str]:
    if given is None:
        return None, "no --release given"
    if isinstance(given, str):
        return None, f"{given} is a URL of a built release: its source is not here to gate"
    path = given
    if path.is_dir() and (path / "Cargo.toml").is_file():
        return path.resolve(), ""
    if path.is_dir():
        return None, f"{path} is no cargo project (no Cargo.toml)"
    return None, f"{path} is a prebuilt binary: pass its cargo project to gate the source"


def _cargo_fmt(ctx: _Context) -> _Verdict:
    assert ctx.project is not None
    result = cargo.run_gate(ctx.project, cargo.fmt_check_argv(cargo.find_cargo(), ctx.project / "Cargo.toml"))
    if result.returncode == 0:
        return _Verdict("ok", detail="cargo fmt --check: formatted")
    output = result.stdout + result.stderr
    return _failed(cargo.unformatted(output, ctx.project), output)


def _cargo_clippy(ctx: _Context) -> _Verdict:
    assert ctx.project is not None
    result = cargo.run_gate(ctx.project, cargo.clippy_argv(cargo.find_cargo(), ctx.project / "Cargo.toml"))
    if result.returncode == 0:
        return _Verdict("ok", detail="cargo clippy --all-targets -- -D warnings: no warning")
    return _failed(cargo.diagnostics(result.stdout), result.stderr)


def _cargo_test(ctx: _Context) -> _Verdict:
    assert ctx.project is not None
    result = cargo.run_gate(ctx.project, cargo.test_argv(cargo.find_cargo(), ctx.project / "Cargo.toml"))
    output = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("{"))
    if result.returncode == 0:
        passed = sum(int(n) for n in re.findall(r"^test result: ok\. (\d+) passed", output, re.MULTILINE))
        return _Verdict("ok", detail=f"cargo test: {passed} test(s) passed")
    errors = [d for d in cargo.diagnostics(result.stdout) if ": error: " in d]
    return _failed(errors + cargo.failed_tests(output), result.stderr + output)


def _from_verify(name: str) -> Callable[[_Context], _Verdict]:
    """The gate that is `orchestrate verify`'s check `name`."""

    def gate(ctx: _Context) -> _Verdict:
        from orchestrator.verify import checkov, checks

        functions = {"terraform-fmt": checks.check_terraform_fmt, "terraform-validate": checks.check_terraform_validate,
                     "checkov": checkov.check_checkov, "ansible-lint": checks.check_ansible_lint}
        try:
            outcome = functions[name](ctx.verify_context())
        except OrchestratorError as exc:
            detail = exc.message + (f"\n{exc.output_tail}" if isinstance(exc, CommandError) else "")
            return _Verdict("failed", tuple(detail.splitlines()))
        if outcome.status == "failed":
            return _Verdict("failed", tuple(line for line in outcome.detail.splitlines() if line.strip()))
        return _Verdict(outcome.status, detail=outcome.detail)

    return gate


def _promtool(ctx: _Context) -> _Verdict:
    if not ctx.loaded.env.monitoring.enabled:
        return _Verdict("skipped", detail="monitoring.enabled is false for this environment")
    from orchestrator.monitoring.checks import verify_monitoring

    report = verify_monitoring(ctx.loaded)
    checks = [c for c in report.checks if c.name.startswith("promtool")]
    bad = [c for c in checks if not c.ok]
    if bad:
        return _Verdict("failed", tuple(f"{c.name} ({c.command}): {line}" for c in bad
                                        for line in (c.detail.splitlines() or ["failed"])))
    again = " (the rendered files unchanged since the last clean run)" if report.remembered else ""
    return _Verdict("ok", detail=", ".join(c.name for c in checks) + ": passed" + again)


_GATE_FUNCTIONS: dict[str, Callable[[_Context], _Verdict]] = {
    "cargo-fmt": _cargo_fmt,
    "cargo-clippy": _cargo_clippy,
    "cargo-test": _cargo_test,
    "terraform-fmt": _from_verify("terraform-fmt"),
    "terraform-validate": _from_verify("terraform-validate"),
    "checkov": _from_verify("checkov"),
    "ansible-lint": _from_verify("ansible-lint"),
    "promtool": _promtool,
}


def _version(name: str, ctx: _Context) -> str | None:
    """The version of the tool behind gate `name` (checkov reports its own while it scans)."""
    if name == "checkov":
        return str((ctx.verify_context().cache.get("versions") or {}).get("checkov") or "") or None
    if name in CARGO_GATES:
        tool = {"cargo-fmt": "fmt", "cargo-clippy": "clippy"}.get(name)
        return program_version(cargo.version_argv(cargo.find_cargo(), tool))
    if name.startswith("terraform"):
        if "terraform" not in ctx.versions:
            # no update check on the way (terraform asks HashiCorp's checkpoint service otherwise)
            ctx.versions["terraform"] = program_version(["terraform", "version"], env={"CHECKPOINT_DISABLE": "1"})
        return ctx.versions["terraform"]
    if name == "ansible-lint":
        from orchestrator.tools.ansible_checks import program

        return remembered_version([program("ansible-lint"), "--version", "--nocolor"],
                                  env=ctx.verify_context().ansible_env())
    return program_version(["promtool", "--version"])


def run_gates(loaded: LoadedEnvironment, request: GateRequest, *, skipped_by: dict[str, Any] | None = None,
              on_result: Callable[[GateResult], None] | None = None) -> GateReport:
    """Run every gate for `loaded` and `request.release_path` (none stops at the first failure)."""
    project, no_project = _cargo_project(request.release_path)
    ctx = _Context(loaded=loaded, project=project, no_project=no_project)
    results = []
    for name in GATES:
        if name in request.skip:
            who = str((skipped_by or {}).get("who") or ProcessIdentity.current().describe())
            result = GateResult(name, "skipped", detail=f"skipped by {who}: {request.reason}",
                                skipped_by={"who": who, "reason": request.reason})
        elif name in CARGO_GATES and project is None:
            result = GateResult(name, "skipped", detail=no_project)
        else:
            started = time.monotonic()
            try:
                verdict = _GATE_FUNCTIONS[name](ctx)
            except OrchestratorError as exc:  # the tool is missing, timed out, ...: the gate fails
                tail_text = exc.output_tail if isinstance(exc, CommandError) else ""
                verdict = _Verdict("failed", tuple([exc.message, *tail_text.splitlines()[-10:]]))
            seconds = time.monotonic() - started
            try:
                version = None if verdict.status == "skipped" else _version(name, ctx)
            except OrchestratorError:  # the tool could not even be found: its gate says so
                version = None
            result = GateResult(name, verdict.status, seconds, verdict.findings, version, verdict.detail)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return GateReport(env=loaded.name, gates=results,
                      release_path=str(request.release_path) if request.release_path else None)


def gates_step(step: StepHandle, loaded: LoadedEnvironment, request: GateRequest, *, command: str, argv: Sequence[str],
               on_result: Callable[[GateResult], None] | None = None) -> GateReport:
    """Run the gates inside journal step `step`: every result goes into its detail;
    GatesFailed when one failed (the step fails with the findings recorded)."""
    skipped = record_skips(loaded, request, command=command, run_id=step.run.id, argv=argv)
    if skipped is not None:
        step.update(skipped_by_operator=skipped)
    results: list[dict[str, Any]] = []

    def record(result: GateResult) -> None:
        results.append(result.as_dict())
        step.update(gates=results)  # committed as each gate ends: a crash keeps what was judged
        if on_result is not None:
            on_result(result)

    report = run_gates(loaded, request, skipped_by=skipped, on_result=record)
    report.run_id = step.run.id
    step.detail.update(gates=[g.as_dict() for g in report.gates], ok=report.ok)
    if not report.ok:
        raise GatesFailed(report)
    return report


def check_release(loaded: LoadedEnvironment, request: GateRequest, *, argv: Sequence[str],
                  lock_wait: float | None, on_wait: Callable[[str], None] | None = None,
                  on_result: Callable[[GateResult], None] | None = None) -> GateReport:
    """`orchestrate check`: the gates alone, as a journalled run `check` with one step `gates`.

    Takes the environment lock like every verb (its journal has one active run at a time); changes
    nothing on any host. Raises GatesFailed (exit 1) when a gate failed.
    """
    check_skips(loaded, request)
    from orchestrator.runs.session import locked_run

    # a check changes nothing on the hosts or in the shared state: recorded in this controller's
    # journal (no cloud credentials needed to lint and validate)
    with locked_run(loaded.state_dir, command="check", argv=list(argv), steps=["gates"], wait=lock_wait,
                    on_wait=on_wait, env=loaded.name) as session, session.run.step("gates") as step:
        return gates_step(step, loaded, request, command="check", argv=argv, on_result=on_result)
