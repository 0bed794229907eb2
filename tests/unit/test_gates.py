"""The release gates: skip rules, what the cargo gates read from cargo's output, the journal and the audit.

Gate functions are replaced by stand-ins where a test is about the stage around them; the real tools
run in tests/integration/gates.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.pipeline import gates
from orchestrator.pipeline.gates import GATES, GateRequest, GatesFailed, check_release
from orchestrator.runs.audit import AuditLog
from orchestrator.runs.journal import Journal
from orchestrator.tools import cargo


@pytest.fixture
def dev(project_copy: Path) -> LoadedEnvironment:
    return Project(project_copy).load("dev")


@pytest.fixture
def prod(project_copy: Path) -> LoadedEnvironment:
    return Project(project_copy).load("prod")


def test_a_skip_needs_a_known_gate_and_a_reason_and_an_unprotected_environment(dev: LoadedEnvironment,
                                                                               prod: LoadedEnvironment) -> None:
    with pytest.raises(UsageError, match="no such gate; the gates are cargo-fmt, cargo-clippy"):
        gates.check_skips(dev, GateRequest(skip=("clippy",), reason="x"))
    with pytest.raises(UsageError, match="--skip-gate needs --reason"):
        gates.check_skips(dev, GateRequest(skip=("checkov",)))
    with pytest.raises(UsageError, match="--reason is the reason for a --skip-gate"):
        gates.check_skips(dev, GateRequest(reason="because"))
    with pytest.raises(UsageError, match="'prod' is protected") as refused:
        gates.check_skips(prod, GateRequest(skip=("checkov",), reason="provider outage"))
    assert refused.value.exit_status == ExitStatus.BAD_INPUT
    gates.check_skips(dev, GateRequest(skip=("checkov",), reason="provider outage"))  # allowed


FMT_OUTPUT = """Diff in /src/hello/src/main.rs:33:
 const EXIT_USAGE: u8 = 2;
-fn  main() -> ExitCode {
+fn main() -> ExitCode {
Diff in /src/hello/src/app.rs at line 7:
"""

CLIPPY_MESSAGE = ('{"reason":"compiler-message","message":{"level":"error","message":"writing `&Vec` instead of '
                  '`&[_]` involves a new object where a slice will do","code":{"code":"clippy::ptr_arg"},"spans":'
                  '[{"file_name":"src/main.rs","line_start":119,"column_start":23,"is_primary":true}]}}')

TEST_OUTPUT = """
running 2 tests
test app::tests::ok_one ... ok
test app::tests::version_is_json ... FAILED

failures:

---- app::tests::version_is_json stdout ----

thread 'app::tests::version_is_json' (19534) panicked at src/app.rs:187:9:
assertion `left == right` failed
  left: "0.3.0"
 right: "0.1.0"
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace

failures:
    app::tests::version_is_json

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
"""


def test_the_cargo_gates_name_file_line_and_lint_or_test() -> None:
    assert cargo.unformatted(FMT_OUTPUT, Path("/src/hello")) == [
        "src/main.rs:33: not formatted (run `cargo fmt`)", "src/app.rs:7: not formatted (run `cargo fmt`)"]
    # a file compiled for the binary and for its tests reports each diagnostic twice: listed once
    assert cargo.diagnostics(f"{CLIPPY_MESSAGE}\n{CLIPPY_MESSAGE}\n") == [
        "src/main.rs:119:23: error: writing `&Vec` instead of `&[_]` involves a new object where a slice will do "
        "[clippy::ptr_arg]"]
    assert cargo.failed_tests(TEST_OUTPUT) == [
        'test app::tests::version_is_json failed: panicked at src/app.rs:187:9: | assertion `left == right` '
        'failed | left: "0.3.0" | right: "0.1.0"']


def stand_ins(monkeypatch: pytest.MonkeyPatch, failing: dict[str, tuple[str, ...]]) -> list[str]:
    """Replace every gate function; the ones in `failing` fail with those findings. Returns the calls."""
    calls: list[str] = []

    def make(name: str):  # type: ignore[no-untyped-def]
        def gate(ctx: object) -> gates._Verdict:
            calls.append(name)
            if name in failing:
                return gates._Verdict("failed", failing[name])
            return gates._Verdict("ok", detail=f"{name} passed")
        return gate

    monkeypatch.setattr(gates, "_GATE_FUNCTIONS", {name: make(name) for name in GATES})
    monkeypatch.setattr(gates, "_version", lambda name, ctx: f"{name}-tool 1.0")
    return calls


def test_every_gate_runs_and_a_failure_refuses_with_its_findings_journalled(
        dev: LoadedEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = stand_ins(monkeypatch, {"cargo-clippy": ("src/main.rs:3:5: error: needless return [clippy::x]",),
                                    "checkov": ("CKV_AWS_24: ssh open (sg)",)})
    project = tmp_path / "svc"
    project.mkdir()
    (project / "Cargo.toml").write_text('[package]\nname = "svc"\nversion = "0.1.0"\n')
    with pytest.raises(GatesFailed) as refused:
        check_release(dev, GateRequest(release_path=project), argv=["check", "dev"], lock_wait=0)
    assert calls == list(GATES)  # one failure does not hide the findings of the next gates
    assert "cargo-clippy, checkov failed" in refused.value.message
    assert "needless return [clippy::x]" in (refused.value.hint or "")
    assert refused.value.exit_status == ExitStatus.FAILED
    with Journal.open(dev.state_dir, env=dev.name) as journal:
        run = journal.runs(limit=1, with_steps=True)[0]
    assert (run.command, run.state) == ("check", "failed")
    recorded = {g["name"]: g for g in run.steps[0].detail["gates"]}
    assert list(recorded) == list(GATES)
    assert recorded["checkov"]["findings"] == ["CKV_AWS_24: ssh open (sg)"]
    assert recorded["cargo-fmt"]["version"] == "cargo-fmt-tool 1.0"
    assert recorded["cargo-fmt"]["status"] == "ok" and recorded["checkov"]["status"] == "failed"


def test_cargo_gates_are_skipped_for_a_prebuilt_binary(dev: LoadedEnvironment, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    calls = stand_ins(monkeypatch, {})
    binary = tmp_path / "hello"
    binary.write_bytes(b"x")
    report = check_release(dev, GateRequest(release_path=binary), argv=["check", "dev"], lock_wait=0)
    assert report.ok and calls == list(GATES[3:])
    skipped = [g for g in report.gates if g.status == "skipped"]
    assert [g.name for g in skipped] == ["cargo-fmt", "cargo-clippy", "cargo-test"]
    assert "prebuilt binary" in skipped[0].detail and skipped[0].skipped_by is None


def test_a_skipped_gate_is_audited_with_who_and_why(dev: LoadedEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = stand_ins(monkeypatch, {"checkov": ("CKV_AWS_24: ssh open (sg)",)})
    report = check_release(dev, GateRequest(skip=("checkov",), reason="INC-42: checkov mis-parses the module"),
                           argv=["check", "dev", "--skip-gate", "checkov"], lock_wait=0)
    assert report.ok and "checkov" not in calls
    checkov = next(g for g in report.gates if g.name == "checkov")
    assert checkov.status == "skipped" and checkov.skipped_by is not None
    assert checkov.skipped_by["reason"] == "INC-42: checkov mis-parses the module"
    with AuditLog(dev.state_dir, env=dev.name) as audit:
        entry = next(e for e in audit.entries(limit=10) if e.command == "check skip-gate")
    assert entry.outcome == "skipped" and entry.run_id == report.run_id
    assert entry.details["gates"] == ["checkov"] and entry.details["reason"].startswith("INC-42")
    assert entry.user and checkov.skipped_by["who"].startswith(f"{entry.user}@")
