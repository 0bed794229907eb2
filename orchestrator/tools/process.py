"""The one seam through which the orchestrator runs external programs.

Every external program (terraform, ansible, systemd-nspawn, ip, cargo, ...) is started
here: argv lists only, never a shell, always a timeout, output optionally streamed line by
line to a callback while it is also collected for the error message.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from orchestrator.errors import CommandError, CommandTimeout

LineCallback = Callable[[str], None]

#: how many trailing output lines a failure carries
TAIL_LINES = 40


@dataclass(frozen=True)
class CommandResult:
    """Outcome of a finished command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """Last `lines` lines of `text`."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


#: what a process reads on stdin: text, bytes, or several byte strings one after the other
Input = str | bytes | tuple[bytes, ...]


def _feed(stdin: IO[str], data: Input) -> None:
    """Write `data` to a process's stdin and close it."""
    try:
        if isinstance(data, str):
            stdin.write(data)
        else:
            for chunk in (data,) if isinstance(data, bytes) else data:
                stdin.buffer.write(chunk)  # type: ignore[attr-defined]
        stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    check: bool = True,
    on_stdout: LineCallback | None = None,
    on_stderr: LineCallback | None = None,
    input_text: Input | None = None,
    ok_codes: Sequence[int] = (0,),
    stop_signal: int = signal.SIGTERM,
    stop_grace: float = 5.0,
    stdout_to: str | os.PathLike[str] | None = None,
) -> CommandResult:
    """Run `argv` and return its result.

    `env` entries are added to (not substituted for) the current environment; a value
    of "" is passed through as empty. Output lines go to `on_stdout`/`on_stderr` as they
    arrive. With `check`, a return code outside `ok_codes` raises CommandError carrying
    the code, `shlex.join(argv)` and the output tail. A command running past `timeout`
    seconds is stopped (its whole process group: `stop_signal`, then SIGKILL after
    `stop_grace` seconds) and raises CommandTimeout. `input_text` goes to its stdin (bytes as
    they are; a tuple of bytes one after the other, without joining them in memory). With
    `stdout_to`, stdout goes byte for byte into that file (created 0600, or emptied) instead of
    the result: a download of any size, never held in memory.
    """
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    started = time.monotonic()
    sink = None
    if stdout_to is not None:
        sink = os.open(stdout_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen(
            args,
            cwd=os.fspath(cwd) if cwd is not None else None,
            env=full_env,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if sink is None else sink,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(
            f"{args[0]}: program not found (is it installed? run `make up`)",
            argv=args,
            returncode=None,
            output_tail="",
        ) from exc
    finally:
        if sink is not None:
            os.close(sink)  # the child has its own copy

    out_lines: list[str] = []
    err_lines: list[str] = []

    def pump(stream: IO[str], sink: list[str], callback: LineCallback | None) -> None:
        for line in iter(stream.readline, ""):
            sink.append(line)
            if callback is not None:
                callback(line.rstrip("\n"))
        stream.close()

    readers = [threading.Thread(target=pump, args=(proc.stderr, err_lines, on_stderr), daemon=True)]
    if proc.stdout is not None:
        readers.append(threading.Thread(target=pump, args=(proc.stdout, out_lines, on_stdout), daemon=True))
    for reader in readers:
        reader.start()
    if input_text is not None and proc.stdin is not None:
        # written by a thread of its own: a reader that stops reading must not outlast `timeout`
        writer = threading.Thread(target=_feed, args=(proc.stdin, input_text), daemon=True)
        writer.start()
        readers.append(writer)
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc, stop_signal, stop_grace)
        for reader in readers:
            reader.join(timeout=5)
        output = "".join(out_lines) + "".join(err_lines)
        raise CommandTimeout(
            f"`{shlex.join(args)}` timed out after {timeout:g} s",
            argv=args,
            returncode=None,
            output_tail=tail(output),
        ) from None
    except KeyboardInterrupt:
        _kill_group(proc, stop_signal, stop_grace)
        raise
    for reader in readers:
        reader.join(timeout=30)
    result = CommandResult(
        argv=args,
        returncode=returncode,
        stdout="".join(out_lines),
        stderr="".join(err_lines),
        duration=time.monotonic() - started,
    )
    if check and returncode not in ok_codes:
        raise CommandError(
            f"`{shlex.join(args)}` exited with {returncode}",
            argv=args,
            returncode=returncode,
            output_tail=tail(result.stderr or result.stdout),
        )
    return result


class RunningCommand:
    """A command started by `start_command` that streams its output while the caller goes on.

    For long-lived commands whose output is the point (`journalctl -f` over SSH): every line goes
    to a callback as it arrives; `stop()` ends the whole process group (SIGTERM, then SIGKILL).
    """

    def __init__(self, args: list[str], proc: subprocess.Popen[str], readers: list[threading.Thread]) -> None:
        self.argv = args
        self._proc = proc
        self._readers = readers

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        """The return code once the command has ended, else None."""
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds (None: until it ends); its return code, or None when still running.

        Once it has ended, the output read so far has been delivered to the callbacks.
        """
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def stop(self, grace: float = 2.0) -> None:
        """End the command and everything it started (idempotent)."""
        if self._proc.poll() is None:
            _kill_group(self._proc, signal.SIGTERM, grace)
        for reader in self._readers:
            reader.join(timeout=5)


def start_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    on_stdout: LineCallback,
    on_stderr: LineCallback | None = None,
    env: Mapping[str, str] | None = None,
) -> RunningCommand:
    """Start `argv` (argv list, no shell, its own process group) and stream its output lines to
    `on_stdout` / `on_stderr` from reader threads; return at once. The caller ends it with
    `RunningCommand.stop()` or waits for it with `.wait()`."""
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.Popen(
            args, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="replace", start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{args[0]}: program not found (is it installed? run `make up`)", argv=args,
                           returncode=None, output_tail="") from exc

    def pump(stream: IO[str], callback: LineCallback | None) -> None:
        for line in iter(stream.readline, ""):
            if callback is not None:
                callback(line.rstrip("\n"))
        stream.close()

    readers = [threading.Thread(target=pump, args=(proc.stdout, on_stdout), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, on_stderr), daemon=True)]
    for reader in readers:
        reader.start()
    return RunningCommand(args, proc, readers)


def start_detached(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start `argv` as a daemon that outlives the caller and return its pid.

    The program gets its own session, stdin from /dev/null and stdout+stderr appended to
    `log_path`; nobody waits for it here (a background thread reaps it if it ends while the
    caller still runs, so it never lingers as a zombie). Used for long-running supervisors
    such as the local-host launcher.
    """
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                args,
                cwd=os.fspath(cwd) if cwd is not None else None,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(
                f"{args[0]}: program not found (is it installed? run `make up`)",
                argv=args,
                returncode=None,
                output_tail="",
            ) from exc
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid


def _kill_group(proc: subprocess.Popen[str], stop_signal: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Stop the process group with `stop_signal`, escalating to SIGKILL after `grace` seconds."""
    try:
        os.killpg(proc.pid, stop_signal)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def which(program: str) -> Path | None:
    """Path of `program` on PATH (or the venv's bin), or None."""
    import shutil
    import sys

    found = shutil.which(program)
    if found is None:
        candidate = Path(sys.executable).parent / program
        if candidate.exists():
            return candidate
        return None
    return Path(found)
