"""ansible-playbook's Python started ahead of the run that needs it.

Before a playbook runs, `orchestrate` spends about 0.4 s of its own (Python, its modules, the
configuration's schema; then configuration, vault, lock, journal, staging), and ansible-playbook,
started after that, spends about 0.3 s more importing Ansible before it does anything. A command
that may run a playbook (`deploy`, `up`: orchestrator/entry.py) starts
ansible_plugins/prestarted_playbook.py first thing instead: it imports the part of Ansible that
does not depend on Ansible's configuration, on the CPU orchestrate's own start leaves idle, and
waits. When the run is prepared, `tools/runner_pipe.py` hands it the command, environment, working
directory and umask, and it runs ansible-playbook's `main` with them.

It is handed over only when it runs the same interpreter the `ansible-playbook` program found on
the run's PATH names, and the run's Python settings (PYTHON* variables) are the ones it started
with; otherwise it is closed and ansible-playbook is started as a program. A command that runs no
playbook (a release change takes the direct path) leaves it waiting: it uses no CPU then, and ends
when orchestrate exits, since its stdin closes. ORCHESTRATE_PRESTART=0 turns it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: the script (run by path: it imports nothing of orchestrate)
SCRIPT = Path(__file__).resolve().parent / "ansible_plugins" / "prestarted_playbook.py"

#: ORCHESTRATE_PRESTART=0 starts ansible-playbook as a program every time
SWITCH_ENV = "ORCHESTRATE_PRESTART"


def _python_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The variables Python itself reads when it starts (pure)."""
    return {key: value for key, value in env.items() if key.startswith("PYTHON")}


def interpreter_of(program: str) -> str | None:
    """The interpreter the `#!` line of the file `program` names; None when it names none or
    more than a path (`env python3`), or the file cannot be read."""
    try:
        with open(program, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", errors="replace").split()
    return words[0] if len(words) == 1 else None


class Prestarted:
    """One started, waiting ansible-playbook Python and the event pipe it was given."""

    def __init__(self) -> None:
        self.events_read, self.events_write = os.pipe()
        self.python = sys.executable
        self.settings = _python_settings(os.environ)
        try:
            self.proc = subprocess.Popen(
                [self.python, str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(self.events_write,))
        except OSError:
            os.close(self.events_read)
            os.close(self.events_write)
            raise

    def hand_over(self, command: Sequence[str], cwd: str, env: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
        """Give it the run; None (and it is closed) when it cannot run it as the program would."""
        program = shutil.which(command[0], path=env.get("PATH")) if command else None
        if (program is None or self.proc.poll() is not None
                or interpreter_of(program) != self.python
                or _python_settings(env) != self.settings):
            self.close()
            return None
        umask = os.umask(0o077)
        os.umask(umask)
        request = {"argv": [program, *command[1:]], "env": dict(env), "cwd": cwd, "umask": umask}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode())
            self.proc.stdin.close()
        except OSError:  # it ended meanwhile
            self.close()
            return None
        return self.proc

    def close(self) -> None:
        """Let it exit unused (it reads end-of-file) and wait for it."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


_pending: Prestarted | None = None


def prestart() -> None:
    """Start one, unless one waits already or ORCHESTRATE_PRESTART=0."""
    global _pending
    if _pending is None and os.environ.get(SWITCH_ENV, "1") != "0":
        try:
            _pending = Prestarted()
        except OSError:  # no process to spare: the run starts the program, as without it
            _pending = None


def take() -> Prestarted | None:
    """The waiting one, if any (it is the caller's from then on: hand it over or close it)."""
    global _pending
    taken, _pending = _pending, None
    return taken

