"""SQLite faults in the run journal and the audit log: a full disk, a damaged file, a locked
database and a log cut off at its end are reported as what they are, naming the file, and affect
only their own environment."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.runs.audit import AUDIT_HEAD_FILE, AuditError, AuditLog, read_head, verify_state_dir
from orchestrator.runs.db import StateDatabaseError
from orchestrator.runs.journal import Journal, locate_run


def invoke(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--project-dir", str(project), *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def damage(path: Path) -> None:
    """Overwrite an SQLite file with bytes that are not a database (and drop its WAL)."""
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


# --- the journal ------------------------------------------------------------------------------


def test_a_full_disk_is_reported_as_such_not_as_cannot_rollback(tmp_path: Path) -> None:
    with Journal.open(tmp_path, env="dev") as journal:
        run = journal.start_run("up", ["up", "dev"], steps=["deploy"])
        # SQLite rolls the transaction back by itself on SQLITE_FULL; a blind ROLLBACK then failed
        # with "cannot rollback - no transaction is active", which replaced the real error
        journal._db._conn.execute("PRAGMA max_page_count = 1")
        with pytest.raises(StateDatabaseError) as caught, run.step("deploy") as step:
            step.update(payload="x" * 200_000)
    error = caught.value
    assert error.code == "SQLITE_FULL"
    assert str(tmp_path / "journal.db") in error.message
    assert "database or disk is full" in error.message
    assert "cannot rollback" not in error.message
    assert error.hint is not None and "disk" in error.hint


def test_a_damaged_journal_names_its_file(tmp_path: Path) -> None:
    damage(tmp_path / "journal.db")
    with pytest.raises(StateDatabaseError) as caught:
        Journal.open(tmp_path, env="dev")
    assert str(tmp_path / "journal.db") in caught.value.message
    assert caught.value.code == "SQLITE_NOTADB"
    assert "other environments are not affected" in (caught.value.hint or "")


def test_locate_run_passes_over_a_damaged_journal(tmp_path: Path) -> None:
    root = tmp_path / ".orchestrate"
    with Journal.open(root / "prod", env="prod") as journal:
        run = journal.start_run("up", ["up", "prod"])
        run.fail("x")
    (root / "dev").mkdir(parents=True)
    damage(root / "dev" / "journal.db")  # sorts before prod: it used to stop the search
    unreadable: list[str] = []
    assert locate_run(root, run.id, unreadable=unreadable) == root / "prod"
    assert locate_run(root, "20990101T000000-0000", unreadable=unreadable) is None
    assert len(unreadable) == 2 and all("dev/journal.db" in u for u in unreadable)


@pytest.fixture
def two_envs(project_copy: Path) -> Path:
    """The project with a failed run in staging and a damaged journal in dev."""
    root = project_copy / ".orchestrate"
    with Journal.open(root / "staging", env="staging") as journal:
        run = journal.start_run("fake", ["fake", "staging"], steps=["a"])
        run.fail("x")
    (root / "dev").mkdir(parents=True)
    damage(root / "dev" / "journal.db")
    (project_copy / "run-id").write_text(run.id)
    return project_copy


def test_one_damaged_journal_leaves_the_other_environments_working(two_envs: Path) -> None:
    run_id = (two_envs / "run-id").read_text()
    code, out = invoke(two_envs, "runs", "staging", "--json")
    assert code == 0, out
    assert [r["id"] for r in json.loads(out)["runs"]] == [run_id]
    # resume finds the run although dev's journal, searched first, cannot be read; the run's own
    # verb then refuses it (it takes no --resume), which shows the search got past dev
    code, out = invoke(two_envs, "resume", run_id)
    assert code == 2, out
    assert "cannot be resumed (its command takes no --resume)" in out
    assert "internal error" not in out


def test_the_damaged_journal_itself_is_a_clear_error(two_envs: Path) -> None:
    code, out = invoke(two_envs, "runs", "dev")
    assert code == 1
    assert "internal error" not in out
    assert "dev/journal.db" in out and "file is not a database" in out
    code, out = invoke(two_envs, "resume", "20990101T000000-0000")
    assert code == 2
    assert "dev/journal.db" in out  # the hint says which journal could not be searched


# --- the audit log ----------------------------------------------------------------------------


def cut_newest(state_dir: Path, count: int) -> None:
    """What someone with write access to audit.db can do: drop the guard, delete the newest rows."""
    conn = sqlite3.connect(state_dir / "audit.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE id > (SELECT MAX(id) FROM audit) - ?", (count,))
    conn.close()


def test_the_head_follows_every_append(tmp_path: Path) -> None:
    with AuditLog(tmp_path, env="dev") as log:
        assert read_head(tmp_path) is None
        first = log.record(command="up", outcome="completed")
        second = log.record(command="heal", outcome="received")
    head = read_head(tmp_path)
    assert head is not None and (head.id, head.hash) == (second.id, second.hash) != (first.id, first.hash)
    assert (tmp_path / AUDIT_HEAD_FILE).stat().st_mode & 0o777 == 0o600


def test_cutting_off_the_newest_entries_fails_verification(tmp_path: Path) -> None:
    with AuditLog(tmp_path, env="dev") as log:
        for i in range(5):
            log.record(command="up", outcome="completed", details={"i": i})
        assert log.verify() == 5
    cut_newest(tmp_path, 2)
    with AuditLog(tmp_path, env="dev") as log, pytest.raises(AuditError) as caught:
        log.verify()
    assert "entry 5" in caught.value.message and "holds 3 entries" in caught.value.message
    assert "audit.head" in caught.value.message


def test_a_head_one_entry_behind_is_accepted(tmp_path: Path) -> None:
    """A crash between an entry's commit and the head's update leaves the head behind, not ahead."""
    with AuditLog(tmp_path, env="dev") as log:
        log.record(command="up", outcome="completed")
        behind = (tmp_path / AUDIT_HEAD_FILE).read_text()
        log.record(command="up", outcome="failed")
    (tmp_path / AUDIT_HEAD_FILE).write_text(behind)
    assert verify_state_dir(tmp_path) == 2


def test_a_removed_log_with_its_head_left_fails_verification(tmp_path: Path) -> None:
    with AuditLog(tmp_path, env="dev") as log:
        log.record(command="up", outcome="completed")
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(AuditError, match=r"audit\.db is missing"):
        verify_state_dir(tmp_path)


def test_audit_verify_fails_after_the_newest_rows_are_deleted(project_copy: Path) -> None:
    state_dir = project_copy / ".orchestrate" / "dev"
    with AuditLog(state_dir, env="dev") as log:
        for outcome in ("completed", "failed", "completed"):
            log.record(command="deploy", outcome=outcome)
    code, out = invoke(project_copy, "audit", "dev", "--verify")
    assert code == 0 and "hash chain intact (3 entries)" in out
    cut_newest(state_dir, 1)
    code, out = invoke(project_copy, "audit", "dev", "--verify")
    assert code == 1, out
    assert "entries were removed" in out and "internal error" not in out


def test_a_locked_audit_database_is_a_clear_error(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, env="dev", timeout=0.2)
    log.record(command="up", outcome="completed")
    blocker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateDatabaseError) as caught:
            log.record(command="heal", outcome="received")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.record(command="heal", outcome="received")  # usable again once the other writer is done
    assert log.verify() == 2
    log.close()
    assert caught.value.code in ("SQLITE_BUSY", "SQLITE_LOCKED")
    assert str(tmp_path / "audit.db") in caught.value.message
