"""tools.process.start_detached: the launcher of local hosts runs on after its caller."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import CommandError
from orchestrator.tools.process import start_detached


def test_detached_program_gets_its_own_session_and_logs_to_the_file(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("earlier\n")
    code = (
        "import os, sys, time; print('out', os.getsid(0) == os.getpid(), flush=True); "
        "print('err', file=sys.stderr, flush=True); time.sleep(1)"
    )
    pid = start_detached([sys.executable, "-c", code], log_path=log)
    assert pid != os.getpid()
    assert os.getsid(pid) == pid  # a session leader: no terminal signals reach it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "err" not in log.read_text():
        time.sleep(0.05)
    assert log.read_text().splitlines() == ["earlier", "out True", "err"]  # appended, both streams


def test_missing_program_is_a_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="program not found"):
        start_detached(["/nonexistent/program"], log_path=tmp_path / "log")
