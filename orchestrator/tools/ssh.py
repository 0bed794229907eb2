"""Adapter over OpenSSH's `ssh`: the controller's direct sessions to the fleet's hosts.

Everything that is not a playbook run reaches a host here (status probes, `orchestrate exec`,
`orchestrate logs`): the project's key only (IdentitiesOnly), the environment's known_hosts file
(keys recorded on first contact, as the inventory's Ansible settings do), BatchMode (never a
prompt), and the address guard called on the target's address right before connecting. The argv
is built by a pure function (`ssh_argv`); the remote command is one string for the remote shell,
so callers quote an argv with `shlex.join` and never splice text into it.

Short commands share a connection per host through ControlMaster (the first one pays the key
exchange, the next ones ~10 ms); long-lived ones (`journalctl -f`) get their own connection with
tight keep-alives, so that a host that went away is noticed within seconds.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.files import private_dir, ssh_control_dir
from orchestrator.tools.process import (
    CommandResult,
    Input,
    LineCallback,
    RunningCommand,
    run_command,
    start_command,
)

SSH = "ssh"

#: the address guard: returns the address when the controller may connect to it, raises otherwise
AddressGuard = Callable[[str], str]

#: exit status of ssh itself when the connection failed (remote commands' codes pass through)
SSH_FAILED = 255


@dataclass(frozen=True)
class SshTarget:
    """One host as the controller reaches it."""

    name: str
    address: str
    user: str
    key: Path
    known_hosts: Path | None = None
    port: int = 22


@dataclass(frozen=True)
class SshOptions:
    """How a session connects: timeouts, keep-alives and connection sharing."""

    connect_timeout: int = 5
    alive_interval: int = 15
    """Seconds between keep-alives; after `alive_count` unanswered ones the session ends (255)."""
    alive_count: int = 3
    control_dir: str | None = None
    """Directory of ControlMaster sockets (None: no connection sharing)."""
    control_persist: str = "60s"

    @classmethod
    def shared(cls) -> SshOptions:
        """Short commands: one master connection per host, kept for a minute."""
        return cls(control_dir=default_control_dir())

    @classmethod
    def follow(cls) -> SshOptions:
        """A long-lived session of its own that notices a vanished host within ~6 s."""
        return cls(alive_interval=2, alive_count=3)


def default_control_dir() -> str:
    """The per-user directory of ControlMaster sockets (short: a socket path must stay under ~108 bytes)."""
    return str(ssh_control_dir())


def ssh_argv(target: SshTarget, remote_command: str, options: SshOptions | None = None) -> list[str]:
    """The ssh argv running `remote_command` (one string for the remote shell) on `target` (pure)."""
    options = options or SshOptions()
    argv = [
        SSH, "-T", "-i", str(target.key),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={options.connect_timeout}",
        "-o", f"ServerAliveInterval={options.alive_interval}",
        "-o", f"ServerAliveCountMax={options.alive_count}",
    ]
    if target.known_hosts is not None:
        # hosts the project created itself: their keys are recorded on first contact in the
        # environment's own known_hosts file (the same settings the inventory gives Ansible)
        argv += ["-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
    if options.control_dir is not None:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={options.control_dir}/%C",
                 "-o", f"ControlPersist={options.control_persist}"]
    else:
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if target.port != 22:
        argv += ["-p", str(target.port)]
    argv += ["-l", target.user, "--", target.address, remote_command]
    return argv


def remote_argv(argv: Sequence[str]) -> str:
    """An argv as one command line for the remote shell, every word quoted (pure)."""
    return shlex.join(argv)


def _prepare(target: SshTarget, options: SshOptions, guard: AddressGuard) -> SshTarget:
    guard(target.address)  # raises before anything connects to an address that is not the project's
    if options.control_dir is not None:
        private_dir(Path(options.control_dir))  # ours, 0700: refused when someone else made it
    return target


def run_ssh(target: SshTarget, remote_command: str, *, guard: AddressGuard, options: SshOptions | None = None,
            timeout: float = 60, on_stdout: LineCallback | None = None,
            on_stderr: LineCallback | None = None, input_text: Input | None = None,
            stdout_to: Path | None = None) -> CommandResult:
    """Run `remote_command` on `target` and return its result whatever its exit code (255: ssh
    itself failed). Raises HostError (from `guard`) before connecting to a foreign address, and
    CommandTimeout after `timeout` seconds. `stdout_to`: the remote stdout's bytes go into that
    file (a download), not into the result."""
    options = options or SshOptions.shared()
    _prepare(target, options, guard)
    return run_command(ssh_argv(target, remote_command, options), timeout=timeout, check=False,
                       on_stdout=on_stdout, on_stderr=on_stderr, input_text=input_text, stdout_to=stdout_to)


def start_ssh(target: SshTarget, remote_command: str, *, guard: AddressGuard, on_stdout: LineCallback,
              on_stderr: LineCallback | None = None, options: SshOptions | None = None) -> RunningCommand:
    """Start a long-lived `remote_command` on `target` streaming its lines (see `start_command`)."""
    options = options or SshOptions.follow()
    _prepare(target, options, guard)
    return start_command(ssh_argv(target, remote_command, options), on_stdout=on_stdout, on_stderr=on_stderr)


def connection_failed(result: CommandResult) -> bool:
    """Whether ssh itself failed (no connection, refused key), as opposed to the remote command."""
    return result.returncode == SSH_FAILED


def describe_failure(result: CommandResult) -> str:
    """One line saying why a session failed (ssh's own message when it has one)."""
    text = (result.stderr or result.stdout).strip().splitlines()
    return text[-1] if text else f"ssh exited with {result.returncode}"

