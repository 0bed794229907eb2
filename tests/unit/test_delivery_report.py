"""Delivery figures from a run journal (orchestrator.runs.report), their Prometheus textfile and
the dashboard panels that read it (orchestrator.monitoring.delivery).

The journal is a real one, written through its API on a clock the test moves, so every duration
below is known exactly."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import HealthGateFailed, OrchestratorError
from orchestrator.monitoring.delivery import (
    TEXTFILE,
    TEXTFILE_DIR,
    delivery_panels,
    exposition,
    panel_exprs,
    upload_argv,
)
from orchestrator.runs.identity import isoformat
from orchestrator.runs.journal import Journal
from orchestrator.runs.report import DeliveryReport, delivery_report

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("orchestrator.runs.journal.utcnow", clock)
    return clock


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    with Journal.open(tmp_path / "dev", env="dev", transitions=lambda a, b: True) as journal:
        yield journal


def deploy(journal: Journal, clock: Clock, seconds: float, *, release: str | None, strategy: str = "rolling",
           built: datetime | None = None, state: str = "deployed", fail: OrchestratorError | None = None,
           command: str = "deploy", failing_host: tuple[float, float] | None = None) -> str:
    """A deploy run whose deploy step takes `seconds`; `failing_host`: (staged at, failed at) offsets."""
    steps = ["build", "deploy"] if command == "up" else ["deploy"]
    run = journal.start_run(command, [command, "dev"], steps=steps)
    if command == "up":
        with run.step("build") as step:
            step.detail.update(release=release, built=isoformat(built) if built else None)
            clock.advance(5)
        if release:
            run.set_release(release)
    try:
        with run, run.step("deploy") as step:
            detail: dict[str, Any] = {"strategy": strategy}
            if release and command == "deploy":
                detail.update(release=release, built=isoformat(built) if built else None)
            step.update(**detail)
            if failing_host is not None:
                staged, failed = failing_host
                start = clock.now
                run.host_transition("app-1", "backed_up")
                clock.now = start + timedelta(seconds=staged)
                run.host_transition("app-1", "staged")
                clock.now = start + timedelta(seconds=failed)
                run.host_transition("app-1", "failed")
                run.host_transition("app-1", "rolled_back")
                clock.now = start
            clock.advance(seconds)
            if fail is not None:
                raise fail
            step.detail.update(state=state)
    except OrchestratorError:
        pass
    clock.advance(1)
    return run.id


def rollback(journal: Journal, clock: Clock, seconds: float, *, command: str = "rollback") -> str:
    steps = ["rollback"]
    run = journal.start_run(command, [command, "dev"], steps=steps)
    with run, run.step("rollback"):
        clock.advance(seconds)
    clock.advance(1)
    return run.id


@pytest.fixture
def history(journal: Journal, clock: Clock) -> dict[str, str]:
    """Five deployments and the runs around them:

    t=0      deploy v1 (rolling) ok, 10 s, built an hour before
    t=11     deploy v2 (rolling) failed its gate: staged at +2 s, failed at +7 s, run ends at +20 s
    t=32     deploy v3 (blue-green) ok, 30 s, built 2 min before
    t=63     rollback, 4 s                                  -> charged to v3
    t=68     deploy (no release: the build failed)           -> no deployment
    t=70     deploy v3 again, unchanged                      -> no deployment
    t=73     up (rolling) ok: build 5 s, deploy 12 s
    t=91     heal rollback, 6 s                              -> charged to the up's deploy
    """
    runs = {"v1": deploy(journal, clock, 10, release="0.1.0-aaaaaaaaaaaa", built=T0 - timedelta(hours=1))}
    runs["v2"] = deploy(journal, clock, 20, release="0.2.0-bbbbbbbbbbbb", built=T0,
                        fail=HealthGateFailed("gate failed"), failing_host=(2, 7))
    runs["v3"] = deploy(journal, clock, 30, release="0.3.0-cccccccccccc", strategy="blue-green",
                        built=clock.now - timedelta(minutes=2), state="switched")
    runs["rollback"] = rollback(journal, clock, 4)
    runs["broken"] = deploy(journal, clock, 1, release=None, fail=OrchestratorError("cargo build failed"))
    runs["same"] = deploy(journal, clock, 2, release="0.3.0-cccccccccccc", state="unchanged")
    runs["up"] = deploy(journal, clock, 12, release="0.4.0-dddddddddddd", command="up",
                        built=clock.now - timedelta(seconds=30))
    runs["heal"] = rollback(journal, clock, 6, command="heal")
    return runs


def report(journal: Journal, clock: Clock) -> DeliveryReport:
    return delivery_report(journal, since=timedelta(days=30), until=clock.now)


def test_deployments_and_how_they_ended(journal: Journal, clock: Clock, history: dict[str, str]) -> None:
    found = {d.run_id: d for d in report(journal, clock).deployments}
    assert list(found) == [history["v1"], history["v2"], history["v3"], history["up"]]
    assert [d.result for d in found.values()] == ["succeeded", "gate_failed", "succeeded", "succeeded"]
    v3 = found[history["v3"]]
    assert v3.rolled_back_by == "operator" and v3.rollback_run == history["rollback"]
    assert found[history["up"]].rolled_back_by == "heal"
    assert found[history["v1"]].rolled_back_by is None
    assert [d.duration for d in found.values()] == [10, 20, 30, 12]


def test_lead_time_runs_from_the_build_to_serving(journal: Journal, clock: Clock, history: dict[str, str]) -> None:
    found = {d.run_id: d for d in report(journal, clock).deployments}
    assert found[history["v1"]].lead_time == 3600 + 10
    assert found[history["v3"]].lead_time == 120 + 30
    # up: the build step recorded `built`; the deploy step ended 5 s of build + 12 s later
    assert found[history["up"]].lead_time == 30 + 5 + 12
    assert found[history["v2"]].lead_time is None  # never served


def test_time_to_restore(journal: Journal, clock: Clock, history: dict[str, str]) -> None:
    found = {d.run_id: d for d in report(journal, clock).deployments}
    # the failing release went onto app-1 at +2 s; the run ended (every host back) at +20 s
    assert found[history["v2"]].time_to_restore == 18
    # v3 served from its end until the rollback ended: 1 s gap + 4 s of rollback
    assert found[history["v3"]].time_to_restore == 5
    assert found[history["up"]].time_to_restore == 7
    assert found[history["v1"]].time_to_restore is None


def test_figures_overall_and_per_strategy(journal: Journal, clock: Clock, history: dict[str, str]) -> None:
    data = report(journal, clock).as_dict()
    assert (data["deploys"], data["succeeded"], data["gate_failed"], data["errors"]) == (4, 3, 1, 0)
    assert (data["rolled_back"], data["heal_rolled_back"], data["failed_changes"]) == (1, 1, 3)
    assert data["change_failure_rate"] == 0.75
    assert data["deploys_per_day"] == round(4 / 30, 4)
    assert data["lead_time"] == {"count": 3, "median": 150, "mean": round((3610 + 150 + 47) / 3, 3), "max": 3610}
    assert data["time_to_restore"] == {"count": 3, "median": 7, "mean": 10, "max": 18}
    strategies = {f["strategy"]: f for f in data["by_strategy"]}
    assert list(strategies) == ["rolling", "blue-green"]
    assert (strategies["rolling"]["deploys"], strategies["rolling"]["failed_changes"]) == (3, 2)
    assert (strategies["blue-green"]["deploys"], strategies["blue-green"]["change_failure_rate"]) == (1, 1.0)


def test_slowest_steps_and_their_share(journal: Journal, clock: Clock, history: dict[str, str]) -> None:
    data = report(journal, clock)
    steps = {s.name: s for s in data.steps}
    # deploy steps: 10 + 20 + 30 + 1 + 2 + 12; rollback steps: 4 + 6; build: 5
    assert steps["deploy"].seconds == 75 and steps["deploy"].runs == 6 and steps["deploy"].max == 30
    assert (steps["rollback"].seconds, steps["build"].seconds) == (10, 5)
    assert [s.name for s in data.slowest_steps()] == ["deploy", "rollback", "build"]
    assert data.step_seconds == 90 and steps["deploy"].share == pytest.approx(75 / 90)


def test_the_window_leaves_older_runs_out(journal: Journal, clock: Clock, history: dict[str, str]) -> None:
    recent = delivery_report(journal, since=clock.now - timedelta(seconds=40), until=clock.now)
    assert [d.run_id for d in recent.deployments] == [history["up"]]
    assert recent.overall.heal_rolled_back == 1
    assert delivery_report(journal, since=timedelta(days=1), until=T0 + timedelta(days=3)).overall.deploys == 0


def metric(text: str, sample: str) -> str:
    found = [line.split(" ")[-1] for line in text.splitlines() if line.startswith(sample + " ")]
    assert len(found) == 1, f"{sample} in\n{text}"
    return found[0]


def test_the_textfile_counts_the_whole_journal(journal: Journal, clock: Clock, history: dict[str, str]) -> None:
    text = exposition(delivery_report(journal, since=None), now=clock.now)
    assert metric(text, 'orchestrate_deploys_total{strategy="rolling",result="succeeded"}') == "2"
    assert metric(text, 'orchestrate_deploys_total{strategy="rolling",result="gate_failed"}') == "1"
    assert metric(text, 'orchestrate_deploys_total{strategy="blue-green",result="succeeded"}') == "1"
    # every strategy's series exists from the start, at 0
    assert metric(text, 'orchestrate_deploys_total{strategy="canary-traffic",result="succeeded"}') == "0"
    assert metric(text, 'orchestrate_change_failures_total{strategy="rolling"}') == "2"
    assert metric(text, 'orchestrate_rollbacks_total{strategy="rolling",by="heal"}') == "1"
    assert metric(text, 'orchestrate_rollbacks_total{strategy="blue-green",by="operator"}') == "1"
    assert metric(text, 'orchestrate_deploy_duration_seconds_count{strategy="rolling"}') == "3"
    assert metric(text, 'orchestrate_deploy_duration_seconds_sum{strategy="rolling"}') == "42"
    assert metric(text, 'orchestrate_deploy_duration_seconds_bucket{strategy="rolling",le="10"}') == "1"
    assert metric(text, 'orchestrate_deploy_duration_seconds_bucket{strategy="rolling",le="+Inf"}') == "3"
    assert metric(text, 'orchestrate_lead_time_seconds_bucket{strategy="rolling",le="3600"}') == "1"
    assert metric(text, 'orchestrate_time_to_restore_seconds_sum{strategy="rolling"}') == "25"
    assert metric(text, 'orchestrate_pipeline_step_seconds_total{step="deploy"}') == "75"
    assert metric(text, "orchestrate_delivery_metrics_timestamp_seconds") == str(int(clock.now.timestamp()))
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_empty_journal_still_exports_every_series(journal: Journal) -> None:
    text = exposition(delivery_report(journal, since=None))
    assert metric(text, 'orchestrate_deploys_total{strategy="rolling",result="succeeded"}') == "0"
    assert "orchestrate_last_deploy_timestamp_seconds{" not in text


def test_the_upload_replaces_the_textfile_atomically() -> None:
    argv = upload_argv()
    assert argv[:2] == ["sh", "-c"] and "mv -f" in argv[2]
    assert argv[-2:] == [f"{TEXTFILE_DIR}/.{TEXTFILE}.tmp", f"{TEXTFILE_DIR}/{TEXTFILE}"]
    # the temporary name does not end in .prom: the textfile collector never reads it half-written
    assert not argv[-2].endswith(".prom")


def test_the_dashboard_panels_query_the_exported_metrics(tmp_path: Path) -> None:
    panels = delivery_panels("prom", y=10)
    assert {p["type"] for p in panels} <= {"stat", "timeseries", "bargauge"}
    assert all(p["gridPos"]["y"] >= 10 and p["datasource"]["uid"] == "prom" for p in panels)
    exprs = panel_exprs(panels)
    exported = {"orchestrate_deploys_total", "orchestrate_change_failures_total", "orchestrate_lead_time_seconds",
                "orchestrate_time_to_restore_seconds", "orchestrate_deploy_duration_seconds",
                "orchestrate_pipeline_step_seconds_total"}
    assert exported <= {name for name in exported if any(name in e for e in exprs)}
    # every expression is valid PromQL: promtool checks them as recording rules
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"panel:{i}", "expr": e}
                                                     for i, e in enumerate(exprs)]}]}
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_report_verb(project_copy: Path, clock: Clock) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--project-dir", str(project_copy), "report", "dev", *args])

    empty = invoke("--json")
    assert empty.exit_code == 0 and json.loads(empty.stdout)["deploys"] == 0
    with Journal.open(project_copy / ".orchestrate" / "dev", env="dev") as journal:
        deploy(journal, clock, 10, release="0.1.0-aaaaaaaaaaaa", built=T0)
        deploy(journal, clock, 20, release="0.2.0-bbbbbbbbbbbb", fail=HealthGateFailed("gate failed"),
               failing_host=(1, 2))
    clock.now = datetime.now(UTC)  # the verb's window ends now
    data = json.loads(invoke("--json", "--since", "3650d").stdout)
    assert (data["deploys"], data["gate_failed"], data["change_failure_rate"]) == (2, 1, 0.5)
    human = invoke("--since", "3650d")
    assert human.exit_code == 0
    assert "2 deployments in the last 3650d" in human.stdout and "deploy" in human.stdout
    bad = invoke("--since", "3x")
    assert bad.exit_code == 2 and "--since '3x' is not a duration" in bad.stderr
    # no inventory yet, so no monitoring host to export to
    assert invoke("--export").exit_code == 2
