"""The SSH adapter's argv and the streaming command seam (pure argv; a real local process for streaming)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import HostError
from orchestrator.tools.process import start_command
from orchestrator.tools.ssh import SshOptions, SshTarget, remote_argv, run_ssh, ssh_argv

TARGET = SshTarget(name="dev-app-1", address="10.213.10.10", user="root", key=Path("/p/.orchestrate/ssh/id_ed25519"),
                   known_hosts=Path("/p/.orchestrate/dev/known_hosts"))


def option(argv: list[str], name: str) -> str | None:
    """The value of `-o NAME=VALUE` in argv."""
    for i, word in enumerate(argv):
        if word == "-o" and argv[i + 1].startswith(f"{name}="):
            return argv[i + 1].split("=", 1)[1]
    return None


def test_argv_uses_the_project_key_and_the_environments_known_hosts_only() -> None:
    argv = ssh_argv(TARGET, "uname -n")
    assert argv[0] == "ssh"
    assert argv[argv.index("-i") + 1] == "/p/.orchestrate/ssh/id_ed25519"
    assert option(argv, "IdentitiesOnly") == "yes"
    assert option(argv, "BatchMode") == "yes"
    assert option(argv, "UserKnownHostsFile") == "/p/.orchestrate/dev/known_hosts"
    assert option(argv, "StrictHostKeyChecking") == "accept-new"
    # the destination follows `--`, the remote command is the last word, as one string
    assert argv[-3:] == ["--", "10.213.10.10", "uname -n"]
    assert argv[argv.index("-l") + 1] == "root"


def test_shared_sessions_use_controlmaster_and_follow_sessions_do_not() -> None:
    shared = ssh_argv(TARGET, "true", SshOptions(control_dir="/tmp/cp"))
    assert option(shared, "ControlMaster") == "auto"
    assert option(shared, "ControlPath") == "/tmp/cp/%C"
    follow = ssh_argv(TARGET, "true", SshOptions.follow())
    assert option(follow, "ControlMaster") == "no"
    assert option(follow, "ServerAliveInterval") == "2"
    assert int(option(follow, "ServerAliveInterval") or 0) * int(option(follow, "ServerAliveCountMax") or 0) <= 6


def test_remote_argv_quotes_every_word_so_nothing_is_spliced() -> None:
    argv = ["sh", "-c", "echo $HOME; rm -rf /", "a b", "'quoted'"]
    line = remote_argv(argv)
    assert shlex.split(line) == argv
    assert remote_argv(["uname", "-n"]) == "uname -n"


def test_the_guard_runs_before_anything_connects() -> None:
    def refuse(address: str) -> str:
        raise HostError(f"{address} is not on the project's bridge")

    started = time.monotonic()
    with pytest.raises(HostError, match="not on the project's bridge"):
        run_ssh(TARGET, "true", guard=refuse)
    assert time.monotonic() - started < 1


def test_start_command_streams_lines_and_stops_the_process_group() -> None:
    lines: list[str] = []
    running = start_command([sys.executable, "-u", "-c",
                             "import time\nfor i in range(1000):\n    print(i, flush=True)\n    time.sleep(0.05)"],
                            on_stdout=lines.append)
    deadline = time.monotonic() + 10
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines[:3] == ["0", "1", "2"]
    assert running.wait(timeout=0.1) is None  # still running
    running.stop(grace=1)
    assert running.poll() is not None
    count = len(lines)
    time.sleep(0.3)
    assert len(lines) == count
