"""ssh to a fleet host: one command per call, as the inventory's user with the project's key.

The argv is built by a pure function (`ssh_argv`); the remote command is an argv list too, quoted
with `shlex.join` for the remote shell. Connections to one host share a master connection for a
minute, so a burst of reads (central logs, a metrics upload) pays the handshake once.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.tools.process import CommandResult, run_command

#: seconds to wait for the TCP connection and the SSH handshake
CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to connect."""

    address: str
    user: str = "root"
    private_key: str | None = None
    options: tuple[str, ...] = field(default_factory=tuple)
    """Extra ssh arguments, e.g. the inventory's `-o UserKnownHostsFile=...` (already split)."""


def control_dir() -> str:
    """Directory of the shared master connections (per user, never world-writable paths of others)."""
    return f"/tmp/orch-cp-{os.getuid()}"


def ssh_argv(target: SshTarget, remote: Sequence[str]) -> list[str]:
    """ssh argv running `remote` (an argv list) on `target` (pure)."""
    argv = ["ssh"]
    if target.private_key:
        argv += ["-i", target.private_key]
    argv += list(target.options)
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "ControlMaster=auto",
             "-o", f"ControlPath={control_dir()}/ssh-%C", "-o", "ControlPersist=60s",
             f"{target.user}@{target.address}", shlex.join(list(remote))]
    return argv


def run_ssh(target: SshTarget, remote: Sequence[str], *, timeout: float = 60, input_text: str | None = None,
            check: bool = True, ok_codes: Sequence[int] = (0,)) -> CommandResult:
    """Run `remote` on `target`; CommandError (with the remote output tail) on a failure."""
    Path(control_dir()).mkdir(mode=0o700, parents=True, exist_ok=True)
    return run_command(ssh_argv(target, remote), timeout=timeout, input_text=input_text, check=check,
                       ok_codes=ok_codes)
