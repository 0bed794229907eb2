"""Unit tests of orchestrator.runs.audit and of the `runs` and `audit` verbs."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.runs.audit import AuditError, AuditLog
from orchestrator.runs.identity import ProcessIdentity, utcnow
from orchestrator.runs.journal import Journal


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".orchestrate" / "dev"


def test_record_and_read_newest_first(state_dir: Path) -> None:
    log = AuditLog(state_dir)
    first = log.record(command="up", outcome="completed", release="1.0.0-abc", plan_sha256="f" * 64,
                       run_id="20261123T181500-abcd", duration=12.5, details={"hosts": 3})
    log.record(command="heal restart", outcome="decided", details={"alert": "ServiceDown", "host": "app-1"})
    entries = log.entries()
    assert [e.command for e in entries] == ["heal restart", "up"]
    me = ProcessIdentity.current()
    up = entries[1]
    assert (up.user, up.host, up.pid, up.env) == (me.user, me.host, me.pid, "dev")
    assert (up.release, up.plan_sha256, up.duration, up.details) == ("1.0.0-abc", "f" * 64, 12.5, {"hosts": 3})
    assert up.id == first.id and up.hash == first.hash
    assert log.entries(limit=1)[0].command == "heal restart"
    assert [e.command for e in log.entries(command="up")] == ["up"]
    assert [e.outcome for e in log.entries(outcome="decided")] == ["decided"]
    log.close()


def test_since_filters_by_time(state_dir: Path) -> None:
    log = AuditLog(state_dir)
    old = utcnow() - timedelta(hours=3)
    log.record(command="up", outcome="failed", at=old)
    log.record(command="up", outcome="completed")
    recent = log.entries(since=utcnow() - timedelta(hours=1))
    assert [e.outcome for e in recent] == ["completed"]
    assert len(log.entries(since=(old - timedelta(seconds=1)).isoformat())) == 2
    log.close()


def test_append_only_is_enforced_by_the_database(state_dir: Path) -> None:
    AuditLog(state_dir).record(command="up", outcome="completed")
    conn = sqlite3.connect(state_dir / "audit.db", isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET outcome='failed'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    assert conn.execute("SELECT outcome FROM audit").fetchall() == [("completed",)]
    conn.close()


def test_verify_detects_tampering_outside_the_api(state_dir: Path) -> None:
    log = AuditLog(state_dir)
    for outcome in ("completed", "failed", "completed"):
        log.record(command="up", outcome=outcome)
    assert log.verify() == 3
    conn = sqlite3.connect(state_dir / "audit.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET outcome='completed' WHERE id=2")
    conn.close()
    with pytest.raises(AuditError, match=r"audit entry 2 .* does not match"):
        log.verify()
    log.close()


def test_concurrent_writers_chain_correctly(state_dir: Path) -> None:
    logs = [AuditLog(state_dir) for _ in range(4)]  # four connections, as four processes would have

    def write(log: AuditLog, n: int) -> None:
        for k in range(10):
            log.record(command="heal restart", outcome="decided", details={"writer": n, "k": k})

    threads = [threading.Thread(target=write, args=(log, n)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert logs[0].verify() == 40
    assert len({(e.details["writer"], e.details["k"]) for e in logs[0].entries(limit=None)}) == 40
    for log in logs:
        log.close()


def test_record_run_summarises_a_finished_run(state_dir: Path) -> None:
    with Journal.open(state_dir) as journal:
        run = journal.start_run("up", ["up", "dev", "--yes"], release="1.2.0-0123456789ab", steps=["a"])
        with run.step("a"):
            pass
        record = run.complete()
    log = AuditLog(state_dir)
    entry = log.record_run(record, details={"hosts": 3})
    assert (entry.command, entry.outcome, entry.run_id, entry.release) == ("up", "completed", record.id,
                                                                          "1.2.0-0123456789ab")
    assert entry.duration is not None and entry.duration >= 0
    assert entry.details == {"argv": ["up", "dev", "--yes"], "exit_code": 0, "attempts": 1, "hosts": 3}
    with pytest.raises(AuditError):
        log.record(command="", outcome="x")
    log.close()


# --- the verbs ------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    env_dir = tmp_path / "project" / "inventories" / "dev"
    env_dir.mkdir(parents=True)
    repo = Path(__file__).resolve().parents[2]
    (env_dir / "environment.yml").write_text((repo / "inventories" / "dev" / "environment.yml").read_text())
    return tmp_path / "project"


def invoke(project: Path, *args: str) -> tuple[int, str]:
    # a wide terminal: rich fits tables to the width, and 80 columns would fold the cells
    result = CliRunner().invoke(cli, ["--project-dir", str(project), *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_runs_verb_json_contract(project: Path) -> None:
    code, out = invoke(project, "runs", "dev", "--json")
    assert code == 0 and json.loads(out) == {"env": "dev", "runs": []}
    assert not (project / ".orchestrate" / "dev" / "journal.db").exists()  # reading creates nothing

    with Journal.open(project / ".orchestrate" / "dev") as journal:
        first = journal.start_run("up", ["up", "dev"], steps=["render"])
        with first.step("render"):
            pass
        first.complete()
        second = journal.start_run("deploy", ["deploy", "dev"], release="1.0.0-abcdefabcdef", steps=["deploy"])
        second.fail("health gate")
    code, out = invoke(project, "runs", "dev", "--json")
    data = json.loads(out)
    assert code == 0
    assert [r["id"] for r in data["runs"]] == [second.id, first.id]
    assert [r["state"] for r in data["runs"]] == ["failed", "completed"]
    assert data["runs"][0]["release"] == "1.0.0-abcdefabcdef"
    assert {"id", "command", "state", "started", "finished", "release"} <= set(data["runs"][0])

    code, out = invoke(project, "runs", "dev", second.id, "--json")
    detail = json.loads(out)
    assert code == 0 and detail["run"]["steps"][0]["name"] == "deploy" and detail["run"]["error"] == "health gate"

    code, out = invoke(project, "runs", "dev")
    assert code == 0 and first.id in out and "failed" in out

    code, out = invoke(project, "runs", "dev", "20990101T000000-0000")
    assert code == 1 and "no run 20990101T000000-0000" in out

    code, out = invoke(project, "runs", "prod")
    assert code == 2 and "unknown environment 'prod'" in out


def test_audit_verb(project: Path) -> None:
    state_dir = project / ".orchestrate" / "dev"
    code, out = invoke(project, "audit", "dev", "--json")
    assert code == 0 and json.loads(out) == {"env": "dev", "entries": []}
    with AuditLog(state_dir) as log:
        log.record(command="up", outcome="completed", release="1.0.0-abc", at=utcnow() - timedelta(hours=5))
        log.record(command="lock takeover", outcome="taken_over", details={"reason": "pid 7 is gone"})
    code, out = invoke(project, "audit", "dev", "--json", "--verify")
    data = json.loads(out)
    assert code == 0 and data["verified"] == 2
    assert [e["command"] for e in data["entries"]] == ["lock takeover", "up"]
    code, out = invoke(project, "audit", "dev", "--json", "--since", "1h")
    assert [e["command"] for e in json.loads(out)["entries"]] == ["lock takeover"]
    code, out = invoke(project, "audit", "dev", "--limit", "1")
    assert code == 0 and "lock takeover" in out and "pid 7 is gone" in out and "1.0.0-abc" not in out
    code, out = invoke(project, "audit", "dev", "--since", "yesterday-ish")
    assert code == 2 and "--since" in out
