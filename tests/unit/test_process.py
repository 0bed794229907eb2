"""The subprocess seam: argv lists, streaming, failures that carry rc/argv/tail, timeouts."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import CommandError, CommandTimeout
from orchestrator.tools.process import run_command, tail


def test_success_collects_output() -> None:
    result = run_command([sys.executable, "-c", "print('a'); import sys; print('b', file=sys.stderr)"])
    assert result.returncode == 0
    assert result.stdout == "a\n" and result.stderr == "b\n"


def test_streams_lines_as_they_arrive() -> None:
    seen: list[tuple[float, str]] = []
    script = "import time,sys\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.2)\n"
    run_command([sys.executable, "-c", script], on_stdout=lambda line: seen.append((time.monotonic(), line)))
    assert [line for _, line in seen] == ["0", "1", "2"]
    assert seen[-1][0] - seen[0][0] > 0.3  # delivered live, not all at the end


def test_failure_carries_returncode_argv_and_tail() -> None:
    argv = [sys.executable, "-c", "import sys\nfor i in range(100): print('line', i, file=sys.stderr)\nsys.exit(3)"]
    with pytest.raises(CommandError) as info:
        run_command(argv)
    error = info.value
    assert error.returncode == 3
    assert error.argv == argv
    assert "exited with 3" in str(error)
    assert error.output_tail.splitlines()[-1] == "line 99"
    assert "line 0\n" not in error.output_tail


def test_ok_codes_and_no_check() -> None:
    assert run_command([sys.executable, "-c", "raise SystemExit(2)"], ok_codes=(0, 2)).returncode == 2
    assert run_command([sys.executable, "-c", "raise SystemExit(5)"], check=False).returncode == 5


def test_timeout_kills_the_process_group() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"timed out after 0\.5 s"):
        run_command([sys.executable, "-c", "import time; print('x', flush=True); time.sleep(30)"], timeout=0.5)
    assert time.monotonic() - started < 10


def test_missing_program_is_a_clear_error() -> None:
    with pytest.raises(CommandError, match="program not found"):
        run_command(["definitely-not-a-program-xyz"])


def test_env_is_added_and_input_is_passed() -> None:
    result = run_command(
        [sys.executable, "-c", "import os,sys; print(os.environ['ORCH_T'], sys.stdin.read())"],
        env={"ORCH_T": "v"},
        input_text="in",
    )
    assert result.stdout.strip() == "v in"


def test_tail() -> None:
    assert tail("\n".join(str(i) for i in range(10)), 3) == "7\n8\n9"


def test_stdout_to_a_file_keeps_every_byte_and_the_errors(tmp_path: Path) -> None:
    target = tmp_path / "download"
    target.write_bytes(b"an older, longer file the download replaces\n")
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 3); sys.stderr.write('said on stderr\\n')"
    result = run_command([sys.executable, "-c", script], stdout_to=target, check=False)
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr == "said on stderr\n"
    assert target.read_bytes() == bytes(range(256)) * 3  # not decoded, not truncated, nothing left over
    fresh = tmp_path / "fresh"
    run_command([sys.executable, "-c", "print('x')"], stdout_to=fresh)
    assert fresh.read_text() == "x\n" and stat.S_IMODE(fresh.stat().st_mode) == 0o600
