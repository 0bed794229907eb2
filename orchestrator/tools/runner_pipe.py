"""ansible-playbook under ansible-runner's preparation, its events read from a pipe of their own.

ansible-runner prepares the run (`RunnerConfig.prepare`: argv, environment, working directory,
artifact dir) and its status callbacks and artifacts (`command`, `stdout`, `status`, `rc`,
`job_events/`) are kept; the run itself is driven here. Two of its costs are not paid:

- its loop (`Runner.run`, pexpect mode) gives the child a pseudo-terminal, reads it 2,000 bytes at
  a time with a sleep after every read, and waits 0.1 s after the child has exited before it looks
  at its status;
- its event callback (`awx_display`) wraps every line Ansible prints, writes each event to a file
  the parent reads back, and base64-encodes it into the output, which the parent then decodes
  (`OutputEventFilter`) and writes again, a few characters at a time: up to about 0.2 s of a run
  on five hosts, on the CPUs the playbook's workers need (docs/performance.md).

Instead the child's stdout callback is `orchestrate_events` (ansible_plugins/callback/): Ansible's
default output, plus one JSON line per event on a pipe of its own. Both pipes are read here; each
event gets its counter and is handed to the event handler on the calling thread and, when the
handler keeps it, written to `job_events/<counter>-<uuid>.json` as ansible-runner would.

The child runs in a session of its own, as under pexpect: a Ctrl-C on the operator's terminal
reaches orchestrate only, which decides when the run may stop (run_playbook's cancel rule); a
cancel or the run's timeout kills the child's process group, as ansible-runner does.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import select
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.files import atomic_write

#: how often the loop asks whether to cancel while the child prints nothing
CANCEL_POLL = 0.5

#: bytes read from a pipe at a time
READ_SIZE = 1 << 16

#: mode of the run's records, as ansible-runner writes them
PRIVATE = stat.S_IRUSR | stat.S_IWUSR

#: what ansible-runner records as the exit code of a canceled or timed-out run
KILLED_RC = 254

#: the stdout callback that writes the events (ansible_plugins/callback/orchestrate_events.py)
EVENTS_CALLBACK = "orchestrate_events"

#: its directory, given to Ansible as a callback plugin path
CALLBACK_DIR = Path(__file__).resolve().parent / "ansible_plugins" / "callback"

#: an event's uuid as the callback writes it (it names the event's file)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: the environment variable that tells it which inherited file descriptor to write to
EVENTS_FD_ENV = "ORCHESTRATE_EVENTS_FD"


@dataclass
class Outcome:
    rc: int
    status: str
    """ansible-runner's words: successful, failed, canceled, timeout."""


def _private_file(path: Path) -> TextIO:
    """A new (truncated) 0600 text file for the run's stdout, written as the run goes on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    return open(fd, "w", encoding="utf-8")


def child_env(prepared: Mapping[str, str], events_fd: int) -> dict[str, str]:
    """The child's environment: what ansible-runner prepared, with orchestrate's event callback
    in place of ansible-runner's (pure)."""
    from ansible_runner.utils import get_callback_dir

    env = {str(k): str(v) for k, v in prepared.items()}
    runner_dirs = {env.pop("AWX_LIB_DIRECTORY", ""), get_callback_dir()}
    others = [d for d in env.get("ANSIBLE_CALLBACK_PLUGINS", "").split(os.pathsep) if d and d not in runner_dirs]
    env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join([str(CALLBACK_DIR), *others])
    env["ANSIBLE_STDOUT_CALLBACK"] = EVENTS_CALLBACK
    env[EVENTS_FD_ENV] = str(events_fd)
    # what only ansible-runner's callback read
    for key in ("AWX_ISOLATED_DATA_DIR", "ORIGINAL_STDOUT_CALLBACK", "RUNNER_OMIT_EVENTS", "RUNNER_ONLY_FAILED_EVENTS"):
        env.pop(key, None)
    return env


class EventWriter:
    """Numbers the events of one run, hands each to `handler` and keeps what it keeps."""

    def __init__(self, folder: Path, ident: str, handler: Callable[[dict[str, Any]], bool] | None) -> None:
        self.folder = folder
        self.ident = ident
        self.handler = handler
        self.counter = 0
        self._partial = ""

    def feed(self, text: str) -> None:
        """Take the next piece of the event stream (JSON lines, possibly cut anywhere)."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def close(self) -> None:
        self._line(self._partial)
        self._partial = ""

    def _line(self, line: str) -> None:
        try:
            event = json.loads(line) if line.strip() else None
        except ValueError:
            event = None  # not one of the callback's lines (a cut-off last one, say): not an event
        if isinstance(event, dict) and isinstance(event.get("event"), str) \
                and _UUID.fullmatch(str(event.get("uuid", ""))):
            self.event(event)

    def event(self, event: dict[str, Any]) -> None:
        self.counter += 1
        event["counter"] = self.counter
        event["runner_ident"] = self.ident
        keep = self.handler(event) if self.handler is not None else True
        if keep:
            atomic_write(self.folder / f"{self.counter}-{event['uuid']}.json", json.dumps(event), mode=PRIVATE)


def run(runner_kwargs: dict[str, Any], *, cancel: Callable[[], bool],
        record_env: Callable[[dict[str, str]], dict[str, str]]) -> Outcome:
    """Prepare the run with ansible-runner (`runner_kwargs`: what `ansible_runner.run` takes, less
    its cancel callback), run it, return its exit code and status.

    `cancel` is asked after every read and at least every CANCEL_POLL seconds; once it returns
    True the child's process group is killed. `record_env` filters the environment written to the
    run's `command` record (it may hold credentials).
    """
    from ansible_runner.interface import init_runner

    kwargs = dict(runner_kwargs)
    handler = kwargs.pop("event_handler", None)
    # given a cancel callback, ansible-runner installs no SIGINT/SIGTERM handlers of its own (it
    # would never remove them)
    runner = init_runner(**kwargs, cancel_callback=cancel)
    config = runner.config
    artifact_dir = Path(config.artifact_dir)
    artifact_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (artifact_dir / "job_events").mkdir(mode=0o700, exist_ok=True)
    from orchestrator.tools import ansible_prestart

    prestarted = ansible_prestart.take()
    events_read, events_write = (prestarted.events_read, prestarted.events_write) if prestarted else os.pipe()
    try:
        env = child_env(config.env, events_write)
        runner.status_callback("starting")
        # the child's stderr goes to its stdout (as on the terminal ansible-runner gave it): an empty file
        atomic_write(artifact_dir / "stderr", "", mode=PRIVATE)
        events = EventWriter(artifact_dir / "job_events", str(config.ident), handler)
        with _private_file(artifact_dir / "stdout") as stdout:
            proc = prestarted.hand_over(config.command, config.cwd, env) if prestarted else None
            started = "prestarted" if proc is not None else "program"
            if proc is None:
                proc = subprocess.Popen(config.command, cwd=config.cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                        pass_fds=(events_write,))
            os.close(events_write)
            events_write = -1
            try:
                record = {"command": config.command, "cwd": config.cwd, "env": record_env(env), "started": started}
                atomic_write(artifact_dir / "command", json.dumps(record, ensure_ascii=False), mode=PRIVATE)
                runner.status_callback("running")
            except BaseException:
                _kill_group(proc.pid)
                proc.wait()
                raise
            killed = _follow(proc, stdout, events_read, events, cancel=cancel, timeout=config.job_timeout or None)
    finally:
        os.close(events_read)
        if events_write >= 0:
            os.close(events_write)
            if prestarted is not None:
                prestarted.close()
    rc = KILLED_RC if killed is not None else proc.returncode
    status = killed or ("successful" if rc == 0 else "failed")
    runner.rc = rc
    runner.status_callback(status)
    for name, value in (("status", status), ("rc", rc)):
        atomic_write(artifact_dir / name, str(value), mode=PRIVATE)
    return Outcome(rc=rc, status=status)


def _follow(proc: subprocess.Popen[bytes], stdout: TextIO, events_fd: int, events: EventWriter, *,
            cancel: Callable[[], bool], timeout: float | None) -> str | None:
    """Read the child's output and events until both end; return why it was killed (None: it was not).

    The child is always waited for; if the handler raises, its process group is killed first.
    """
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    decoders = {out_fd: codecs.getincrementaldecoder("utf-8")(errors="replace"),
                events_fd: codecs.getincrementaldecoder("utf-8")(errors="replace")}
    sinks: dict[int, Callable[[str], Any]] = {out_fd: stdout.write, events_fd: events.feed}
    deadline = time.monotonic() + timeout if timeout else None
    poller = select.poll()
    for fd in sinks:
        poller.register(fd, select.POLLIN | select.POLLHUP)
    killed: str | None = None
    open_fds = set(sinks)
    try:
        while open_fds:
            ready = poller.poll(CANCEL_POLL * 1000)
            # the output first: an event's line reaches the handler after what Ansible printed before it
            for fd, _ in sorted(ready, key=lambda item: item[0] != out_fd):
                chunk = os.read(fd, READ_SIZE)
                if chunk:
                    sinks[fd](decoders[fd].decode(chunk))
                else:
                    sinks[fd](decoders[fd].decode(b"", final=True))
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if not ready and proc.poll() is not None:
                break  # it ended and wrote nothing more for CANCEL_POLL: something it left holds a pipe
            if killed is None:
                if cancel():
                    killed = "canceled"
                elif deadline is not None and time.monotonic() > deadline:
                    killed = "timeout"
                if killed is not None:
                    _kill_group(proc.pid)
        events.close()
    finally:
        proc.stdout.close()
        if proc.poll() is None and killed is None:  # the handler raised: leave no child behind
            _kill_group(proc.pid)
        proc.wait()
    return killed


def _kill_group(pid: int) -> None:
    """Kill the child's process group (its workers and ssh processes with it)."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
