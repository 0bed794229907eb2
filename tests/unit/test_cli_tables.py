"""Tables of the CLI piped and in narrow terminals: one line per row, never a wrapped identifier."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from rich.table import Table

from orchestrator.cli import cli
from orchestrator.cli._tables import print_table
from orchestrator.runs.session import locked_run

RELEASE = "0.2.0-0123456789abcdef"
#: a terminal as narrow as a split pane; rich would fold a run id over two lines here
NARROW = {"COLUMNS": "40", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
WIDE = {"COLUMNS": "200", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}


def invoke(project: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--project-dir", str(project), *args], env=env)


@pytest.fixture
def history(project_copy: Path) -> list[str]:
    """Three finished runs of dev (journal and audit log); their ids, newest first."""
    ids = []
    for _ in range(3):
        with locked_run(project_copy / ".orchestrate" / "dev", command="deploy",
                        argv=["deploy", "dev", "--release", "target/release/hello-service"], steps=["deploy"],
                        env="dev") as session, session.run.step("deploy") as step:
            step.run.set_release(RELEASE)
            step.detail.update(strategy="rolling", note="a detail long enough to be wrapped " * 3)
        ids.append(session.run.id)
    return ids[::-1]


def test_piped_runs_are_one_tab_separated_line_per_run(project_copy: Path, history: list[str]) -> None:
    result = invoke(project_copy, "runs", "dev")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["id", "command", "state", "started (UTC)", "took", "release"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in rows] == history
    assert all(len(row) == 6 and row[1:3] == ["deploy", "completed"] and row[5] == RELEASE for row in rows)


def test_piped_audit_keeps_every_entry_on_one_line(project_copy: Path, history: list[str]) -> None:
    result = invoke(project_copy, "audit", "dev")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split("\t") == ["at (UTC)", "who", "command", "outcome", "took", "details"]
    assert len(rows) == len(history)
    for row, run_id in zip(rows, history, strict=True):
        cells = row.split("\t")
        assert len(cells) == 6 and f"run={run_id}" in cells[5] and f"release={RELEASE}" in cells[5]


def test_piped_hosts_and_backups_are_rows_and_titles_go_to_stderr(project_copy: Path) -> None:
    hosts = invoke(project_copy, "hosts", "dev")
    assert hosts.exit_code == 0, hosts.output
    header, *rows = hosts.stdout.splitlines()
    assert header.split("\t") == ["name", "address", "groups", "state", "launcher"]
    assert rows and all(len(r.split("\t")) == 5 and r.endswith("\tmissing\t-") for r in rows)
    assert hosts.stderr.startswith("hosts of dev (bridge ")

    host_dir = project_copy / ".orchestrate" / "dev" / "backups" / "20261102T000000Z" / "dev-app-1"
    host_dir.mkdir(parents=True)
    (host_dir / "data.tar.gz").write_bytes(b"x" * 2048)
    (host_dir / "release-id").write_text(f"{RELEASE}\n")
    (host_dir / "MANIFEST.sha256").write_text(f"{hashlib.sha256(b'x' * 2048).hexdigest()}  data.tar.gz\n")
    backups = invoke(project_copy, "backups", "dev")
    assert backups.stdout.splitlines() == ["ID\tCREATED\tHOSTS\tSIZE\tRELEASES\tCOMPLETE",
                                           f"20261102T000000Z\t2026-11-02 00:00:00Z\t1\t2.0 KiB\t{RELEASE}\tno"]


def test_a_narrow_terminal_never_wraps_a_run_id(project_copy: Path, history: list[str]) -> None:
    narrow = invoke(project_copy, "runs", "dev", env=NARROW)
    assert narrow.exit_code == 0, narrow.output
    for run_id in history:  # too narrow for a table that keeps the ids whole: plain rows
        assert any(line.startswith(f"{run_id}\t") for line in narrow.stdout.splitlines()), narrow.stdout
    wide = invoke(project_copy, "runs", "dev", env=WIDE)
    assert "\t" not in wide.stdout  # a real table where there is room
    for run_id in history:
        assert any(run_id in line for line in wide.stdout.splitlines())
    detail = invoke(project_copy, "runs", "dev", history[0], env={**WIDE, "COLUMNS": "90"})
    assert detail.exit_code == 0, detail.output
    assert history[0] in detail.stdout and "\t" not in detail.stdout  # the detail column wraps, nothing else


def test_a_table_keeps_its_identifiers_whole_or_falls_back_to_rows() -> None:
    def table() -> Table:
        t = Table("name", "release", "note")
        t.add_row("ot123456-app-1", RELEASE, "[green]healthy[/green] " + "words that may wrap " * 4)
        return t

    def shown(width: int, *, terminal: bool) -> list[str]:
        out = io.StringIO()
        print_table(Console(file=out, width=width, force_terminal=terminal, no_color=True), table())
        return out.getvalue().splitlines()

    roomy = shown(80, terminal=True)
    assert not any("\t" in line for line in roomy)
    assert any("ot123456-app-1" in line and RELEASE in line for line in roomy)
    rows = ["name\trelease\tnote", f"ot123456-app-1\t{RELEASE}\thealthy " + " ".join(["words that may wrap"] * 4)]
    assert shown(30, terminal=True) == rows  # no room for the identifiers: rows, not a cut id
    assert shown(200, terminal=False) == rows  # piped: rows whatever the width
