"""`orchestrate resume RUN_ID` re-invokes the run's own verb with --resume (a stand-in verb here)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.runs.identity import ProcessIdentity
from orchestrator.runs.journal import Journal
from orchestrator.runs.session import locked_run

STEPS = ["render", "provision", "deploy"]
executed: list[str] = []


@click.command("fake-up")
@env_argument
@click.option("--resume", "resume_id", default=None)
@click.option("--lock-wait", type=float, default=None)
@click.option("--fail-at", default=None)
@verb
def fake_up(app: AppContext, env_name: str, resume_id: str | None, lock_wait: float | None,
            fail_at: str | None) -> None:
    """A pipeline of three stages that records which ones ran."""
    state_dir = app.project_dir / ".orchestrate" / env_name
    argv = ["fake-up", env_name] + (["--fail-at", fail_at] if fail_at else [])

    def stage(name: str):  # type: ignore[no-untyped-def]
        def run(handle) -> None:  # type: ignore[no-untyped-def]
            executed.append(name)
            if name == fail_at and resume_id is None:
                raise RuntimeError(f"{name} failed")
        return run

    with locked_run(state_dir, command="fake-up", argv=argv, steps=STEPS, resume=resume_id,
                    wait=lock_wait) as session:
        session.run.execute([(n, stage(n)) for n in STEPS], complete=False)
    app.emit({"run": session.final.id if session.final else None})


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    env_dir = tmp_path / "project" / "inventories" / "dev"
    env_dir.mkdir(parents=True)
    repo = Path(__file__).resolve().parents[2]
    (env_dir / "environment.yml").write_text((repo / "inventories" / "dev" / "environment.yml").read_text())
    cli.add_command(fake_up)
    executed.clear()
    yield tmp_path / "project"
    cli.commands.pop("fake-up", None)


def invoke(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--project-dir", str(project), *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_resume_continues_a_failed_run_at_its_failed_step(project: Path) -> None:
    code, _ = invoke(project, "fake-up", "dev", "--fail-at", "provision")
    assert code == 1
    assert executed == ["render", "provision"]
    runs = json.loads(invoke(project, "runs", "dev", "--json")[1])["runs"]
    run_id = runs[0]["id"]
    assert runs[0]["state"] == "failed"

    executed.clear()
    code, out = invoke(project, "resume", run_id, "--json")
    assert code == 0, out
    assert executed == ["provision", "deploy"]  # render is not run again
    runs = json.loads(invoke(project, "runs", "dev", "--json")[1])["runs"]
    assert [(r["id"], r["state"], r["attempts"]) for r in runs] == [(run_id, "completed", 2)]

    code, out = invoke(project, "resume", run_id)
    assert code == 2 and "already completed" in out


def test_resume_of_an_interrupted_run(project: Path) -> None:
    state_dir = project / ".orchestrate" / "dev"
    with Journal.open(state_dir) as journal:
        run = journal.start_run("fake-up", ["fake-up", "dev"], steps=STEPS)
        with run.step("render"):
            pass
        run._begin_step("provision", {})
    me = ProcessIdentity.current()
    conn = sqlite3.connect(state_dir / "journal.db")  # its process is gone (same pid, other start time)
    conn.execute("UPDATE runs SET pid_start=? WHERE id=?", ((me.pid_start or 0) + 99, run.id))
    conn.commit()
    conn.close()
    assert json.loads(invoke(project, "runs", "dev", "--json")[1])["runs"][0]["state"] == "interrupted"
    code, out = invoke(project, "resume", run.id)
    assert code == 0, out
    assert f"resuming run {run.id}" in out and "at step provision" in out
    assert executed == ["provision", "deploy"]


def test_resume_refusals(project: Path) -> None:
    code, out = invoke(project, "resume", "20990101T000000-0000")
    assert code == 2 and "no run 20990101T000000-0000" in out
    with Journal.open(project / ".orchestrate" / "dev") as journal:
        run = journal.start_run("runs", ["runs", "dev"], steps=["a"])
        run.fail("x")
    code, out = invoke(project, "resume", run.id)
    assert code == 2 and "cannot be resumed (its command takes no --resume)" in out


def test_resume_of_a_run_that_died_after_its_last_step(project: Path) -> None:
    with Journal.open(project / ".orchestrate" / "dev") as journal:
        run = journal.start_run("fake-up", ["fake-up", "dev"], steps=STEPS)
        for name in STEPS:
            with run.step(name):
                pass
        run.interrupt("killed")  # every step done, the completion never written
    code, out = invoke(project, "resume", run.id, "--json")
    assert code == 0, out
    assert "after its last step (only its completion is left)" in out
    assert executed == []  # nothing ran again
    runs = json.loads(invoke(project, "runs", "dev", "--json")[1])["runs"]
    assert (runs[0]["id"], runs[0]["state"]) == (run.id, "completed")
