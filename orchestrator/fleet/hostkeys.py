"""The SSH host keys the controller makes for cloud instances, before they exist.

One ed25519 key pair per instance name, made once and kept under `.orchestrate/ENV/host-keys/`
(directory 0700, private keys 0600): `NAME` and `NAME.pub`. The private half goes to the
instance in its cloud-init user data (orchestrator.fleet.cloudinit) when terraform creates it;
known_hosts is written from the public half the instance was created with, as terraform records
it (aws_fleet's `terraform_data.host_key`), so a second controller with keys of its own still
checks the hosts against the right ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from orchestrator.files import file_lock
from orchestrator.fleet.cloudinit import HostKey, generate_host_key


def ensure_host_keys(directory: Path, names: Iterable[str]) -> dict[str, HostKey]:
    """The host key of every name in `names`, generated for those that have none yet."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    keys: dict[str, HostKey] = {}
    with file_lock(directory / ".lock"):
        for name in names:
            private, public = directory / name, directory / f"{name}.pub"
            if not (private.is_file() and public.is_file()):
                key = generate_host_key(f"root@{name}")
                _write(private, key.private, 0o600)
                _write(public, key.public + "\n", 0o644)
            keys[name] = HostKey(private=private.read_text(), public=public.read_text().strip())
    return keys


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
