"""roles/log_events/files/orchestrate-log-events.py: what counts as a panic or a restart-limit hit,
the textfile it writes (checked by promtool), and a real run against a stand-in journalctl."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.project import load_file_module

PROGRAM = Path(__file__).resolve().parents[3] / "roles" / "log_events" / "files" / "orchestrate-log-events.py"

PANIC = {"MESSAGE": "thread 'main' (812) panicked at src/main.rs:92:9:", "_PID": "812",
         "_SYSTEMD_UNIT": "hello.service", "SYSLOG_IDENTIFIER": "hello"}
LIMIT = {"MESSAGE": "hello.service: Start request repeated too quickly.", "_PID": "1", "UNIT": "hello.service",
         "_SYSTEMD_UNIT": "init.scope"}


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    return load_file_module(PROGRAM, "orchestrate_log_events")


def entry(fields: dict[str, Any], at: float, cursor: str = "c") -> dict[str, Any]:
    return {**fields, "__REALTIME_TIMESTAMP": str(int(at * 1e6)), "__CURSOR": cursor}


def test_panics_and_restart_limits_are_recognised(mod: ModuleType) -> None:
    assert mod.classify(PANIC) == ("panic", "hello.service")
    assert mod.classify(LIMIT) == ("restart_limit", "hello.service")
    # systemd quoting a command line that mentions a panic is not a panic
    assert mod.classify({**PANIC, "_PID": "1"}) is None
    # only systemd speaks for a unit: a process writing systemd's words is not a restart-limit hit
    assert mod.classify({**LIMIT, "_PID": "99"}) is None
    assert mod.classify({"MESSAGE": "GET / 200", "_PID": "5"}) is None
    # a non-UTF-8 message arrives as bytes
    assert mod.classify({**PANIC, "MESSAGE": list(b"x panicked at y \xff")}) == ("panic", "hello.service")


def test_the_panic_message_on_the_next_line_joins_the_quoted_line(mod: ModuleType) -> None:
    counter = mod.Counter()
    assert counter.feed(entry(PANIC, 100.0))
    assert counter.feed(entry({"MESSAGE": "built with the panic feature", "_PID": "812"}, 100.001))
    assert counter.last["panic"]["line"] == ("thread 'main' (812) panicked at src/main.rs:92:9: "
                                             "built with the panic feature")
    # only the one next line, of the same process
    assert not counter.feed(entry({"MESSAGE": "note: run with RUST_BACKTRACE=1", "_PID": "812"}, 100.002))
    counter.feed(entry(PANIC, 200.0))
    assert not counter.feed(entry({"MESSAGE": "another process", "_PID": "9"}, 200.001))
    assert counter.counts == {"panic": 2, "restart_limit": 0}


def test_the_textfile_has_both_counters_from_the_start_and_the_latest_lines(mod: ModuleType) -> None:
    counter = mod.Counter()
    empty = counter.render()
    assert 'orchestrate_log_events_total{kind="panic"} 0' in empty
    assert 'orchestrate_log_events_total{kind="restart_limit"} 0' in empty
    assert "orchestrate_log_event_info{" not in empty
    counter.feed(entry({**PANIC, "MESSAGE": 'said "hi" \\ then panicked at x'}, 50.0))
    counter.feed(entry(LIMIT, 60.0))
    text = counter.render()
    assert 'orchestrate_log_events_total{kind="panic"} 1' in text
    assert ('orchestrate_log_event_info{kind="panic",unit="hello.service",'
            'line="said \\"hi\\" \\\\ then panicked at x"} 1') in text
    assert 'orchestrate_log_event_last_timestamp_seconds{kind="restart_limit"} 60.000' in text


def test_state_round_trips(mod: ModuleType) -> None:
    counter = mod.Counter()
    counter.feed(entry(PANIC, 1.0, cursor="s=1"))
    again = mod.Counter(json.loads(json.dumps(counter.state())))
    assert again.counts == counter.counts and again.last == counter.last and again.cursor == "s=1"
    assert mod.journalctl_argv("s=1")[-1] == "--after-cursor=s=1"
    assert mod.journalctl_argv(None)[-1] == "--lines=0"  # the first start counts nothing of the past


def test_a_run_follows_the_journal_and_writes_a_valid_textfile(tmp_path: Path) -> None:
    journal = tmp_path / "entries.jsonl"
    journal.write_text("\n".join(json.dumps(e) for e in [
        entry({"MESSAGE": "Started hello.service", "_PID": "1"}, 10.0, "s=1"),
        entry(PANIC, 11.0, "s=2"),
        entry({"MESSAGE": "built with the panic feature", "_PID": "812"}, 11.0005, "s=3"),
        entry(LIMIT, 12.0, "s=4"),
    ]) + "\nnot json\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "journalctl"
    # the stand-in records its arguments and prints the entries, then ends like a killed journalctl
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat {journal}\nexit 0\n")
    fake.chmod(0o755)
    textfiles, state = tmp_path / "textfile", tmp_path / "state"
    textfiles.mkdir()
    state.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    argv = [sys.executable, str(PROGRAM), "--textfile-dir", str(textfiles), "--state-dir", str(state)]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    # journalctl should never end: the program exits non-zero so that systemd starts it again
    assert first.returncode == 1, first.stderr
    assert (tmp_path / "argv").read_text().split() == ["--follow", "--output=json", "--no-pager", "--lines=0"]
    prom = textfiles / "orchestrate_log_events.prom"
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    text = prom.read_text()
    assert 'orchestrate_log_events_total{kind="panic"} 1' in text
    assert 'orchestrate_log_events_total{kind="restart_limit"} 1' in text
    assert 'line="thread \'main\' (812) panicked at src/main.rs:92:9: built with the panic feature"' in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # started again: it continues after the saved cursor and keeps its counts
    subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert (tmp_path / "argv").read_text().split()[-1] == "--after-cursor=s=4"
    assert 'orchestrate_log_events_total{kind="panic"} 2' in prom.read_text()
