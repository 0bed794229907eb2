"""ansible-playbook under ansible-runner's preparation and event decoding, read through a pipe.

ansible-runner's own loop (`Runner.run`, pexpect mode) gives the child a pseudo-terminal, reads it
2,000 bytes at a time with a sleep after every read, and waits 0.1 s after the child has exited
before it looks at its status: together about 0.2-0.3 s of every run on a small fleet, where the
whole wrapper has 5% of a 6-7 s playbook to spend (docs/performance.md). Its subprocess mode has a
pipe but neither live events nor a way to cancel. This runs the command ansible-runner prepared
(`RunnerConfig.prepare`: argv, environment, working directory, artifact dir) with a pipe and feeds
what the child prints to ansible-runner's `OutputEventFilter` and `Runner.event_callback`: the same
decoding of the event callback's stream, the same job_events, stdout, status and rc artifacts, the
same event handler calls, on the calling thread.

The child runs in a session of its own, as under pexpect: a Ctrl-C on the operator's terminal
reaches orchestrate only, which decides when the run may stop (run_playbook's cancel rule); a
cancel or the run's timeout kills the child's process group, as ansible-runner does.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import select
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.files import atomic_write

#: how often the loop asks whether to cancel while the child prints nothing
CANCEL_POLL = 0.5

#: bytes read from the pipe at a time (an event is a few KiB of base64)
READ_SIZE = 1 << 16

#: mode of the run's records, as ansible-runner writes them
PRIVATE = stat.S_IRUSR | stat.S_IWUSR

#: what ansible-runner records as the exit code of a canceled or timed-out run
KILLED_RC = 254


@dataclass
class Outcome:
    rc: int
    status: str
    """ansible-runner's words: successful, failed, canceled, timeout."""


def _private_file(path: Path) -> TextIO:
    """A new (truncated) 0600 text file for the run's stdout, written as the run goes on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    return open(fd, "w", encoding="utf-8")


def run(runner_kwargs: dict[str, Any], *, cancel: Callable[[], bool],
        record_env: Callable[[dict[str, str]], dict[str, str]]) -> Outcome:
    """Prepare the run with ansible-runner (`runner_kwargs`: what `ansible_runner.run` takes, less
    its cancel callback), run it, return its exit code and status.

    `cancel` is asked after every read and at least every CANCEL_POLL seconds; once it returns
    True the child's process group is killed. `record_env` filters the environment written to the
    run's `command` record (it may hold credentials).
    """
    from ansible_runner.interface import init_runner
    from ansible_runner.utils import OutputEventFilter

    # given a cancel callback, ansible-runner installs no SIGINT/SIGTERM handlers of its own (it
    # would never remove them)
    runner = init_runner(**runner_kwargs, cancel_callback=cancel)
    config = runner.config
    artifact_dir = Path(config.artifact_dir)
    artifact_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (artifact_dir / "job_events").mkdir(mode=0o700, exist_ok=True)
    env = {str(k): str(v) for k, v in config.env.items()}
    runner.status_callback("starting")
    record = {"command": config.command, "cwd": config.cwd, "env": record_env(env)}
    atomic_write(artifact_dir / "command", json.dumps(record, ensure_ascii=False), mode=PRIVATE)
    # the child's stderr goes to its stdout (as on the terminal ansible-runner gave it): an empty file
    atomic_write(artifact_dir / "stderr", "", mode=PRIVATE)
    timeout = config.job_timeout or None
    killed: str | None = None
    with _private_file(artifact_dir / "stdout") as stdout:
        events = OutputEventFilter(stdout, runner.event_callback, config.suppress_ansible_output,
                                   output_json=config.json_mode)
        proc = subprocess.Popen(config.command, cwd=config.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        runner.status_callback("running")
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        deadline = time.monotonic() + timeout if timeout else None
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        try:
            while True:
                if poller.poll(CANCEL_POLL * 1000):
                    chunk = os.read(fd, READ_SIZE)
                    if not chunk:
                        break
                    events.write(decoder.decode(chunk))
                elif proc.poll() is not None:
                    break  # it ended and printed nothing more for CANCEL_POLL: something it left holds the pipe
                if killed is None:
                    if cancel():
                        killed = "canceled"
                    elif deadline is not None and time.monotonic() > deadline:
                        killed = "timeout"
                    if killed is not None:
                        _kill_group(proc.pid)
            events.write(decoder.decode(b"", final=True))
            events.close()
        finally:
            proc.stdout.close()
            if proc.poll() is None and killed is None:  # the handler raised: leave no child behind
                _kill_group(proc.pid)
            proc.wait()
    rc = KILLED_RC if killed is not None else proc.returncode
    status = killed or ("successful" if rc == 0 else "failed")
    runner.rc = rc
    runner.status_callback(status)
    for name, value in (("status", status), ("rc", rc)):
        atomic_write(artifact_dir / name, str(value), mode=PRIVATE)
    return Outcome(rc=rc, status=status)


def _kill_group(pid: int) -> None:
    """Kill the child's process group (its workers and ssh processes with it)."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
