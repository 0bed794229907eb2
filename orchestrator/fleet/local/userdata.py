"""Cloud-init's first boot, done to a local host's disk: the subset of cloud-config that
orchestrator.fleet.cloudinit writes, applied before the host boots for the first time.

Local hosts thereby come up as cloud images do: the login user with passwordless sudo and the
controller's key, root's SSH login refused unless root is the login user, and the one SSH host
key the controller generated (already in `known_hosts`). Keys this module does not know are an
error rather than silently skipped: the document is ours, a new key needs code here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import HostError
from orchestrator.tools.process import run_command

#: the cloud-config keys applied here
SUPPORTED = frozenset({"users", "disable_root", "ssh_pwauth", "ssh_deletekeys", "ssh_genkeytypes", "ssh_keys"})

#: sshd drop-in written by `disable_root`; sshd takes the first value of a keyword and reads the
#: drop-ins in name order, so this one wins over the image's own (`orchestrate.conf`)
SSHD_LOGIN_DROPIN = "etc/ssh/sshd_config.d/00-orchestrate-login.conf"

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def apply_cloud_config(root: Path, document: Mapping[str, Any]) -> None:
    """Apply `document` to the host whose root filesystem is mounted at `root`.

    HostError for keys outside SUPPORTED and for malformed users.
    """
    unknown = sorted(set(document) - SUPPORTED)
    if unknown:
        raise HostError(f"cloud-config keys not applied to local hosts: {', '.join(unknown)}")
    keys = document.get("ssh_keys") or {}
    if document.get("ssh_deletekeys"):
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
    for name, text in keys.items():
        key_type, _, half = str(name).rpartition("_")
        if half not in ("private", "public") or not key_type.isalnum():
            raise HostError(f"ssh_keys: {name!r} is not <type>_private or <type>_public")
        path = root / "etc/ssh" / (f"ssh_host_{key_type}_key" + (".pub" if half == "public" else ""))
        _write(path, str(text).rstrip("\n") + "\n", 0o600 if half == "private" else 0o644)
    for user in document.get("users") or []:
        if user == "default":
            continue  # the image's default user: local images have none
        _add_user(root, user)
    sshd = ["PasswordAuthentication no"] if document.get("ssh_pwauth") is False else []
    if document.get("disable_root"):
        sshd.append("PermitRootLogin no")
        (root / "root/.ssh/authorized_keys").unlink(missing_ok=True)
    if sshd:
        _write(root / SSHD_LOGIN_DROPIN, "# Written by orchestrate from the host's cloud-config.\n"
               + "".join(f"{line}\n" for line in sshd), 0o644)


def install_authorized_key(root: Path, user: str, public_key: str) -> None:
    """Make `public_key` the authorized key of `user` (root, or a user of the host's passwd)."""
    home, uid, gid = _home(root, user)
    ssh_dir = root / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(ssh_dir, uid, gid)
    authorized = ssh_dir / "authorized_keys"
    if not authorized.exists() or authorized.read_text() != public_key:
        _write(authorized, public_key, 0o600)
    os.chown(authorized, uid, gid)


def _add_user(root: Path, user: Any) -> None:
    if not isinstance(user, Mapping) or not _NAME_RE.match(str(user.get("name", ""))):
        raise HostError(f"users: {user!r} is not a user entry with a login name")
    name = str(user["name"])
    try:
        _home(root, name)
    except HostError:
        run_command(["useradd", "--root", root, "--create-home", "--user-group",
                     "--shell", str(user.get("shell") or "/bin/bash"), name], timeout=60)
    if user.get("sudo"):
        _write(root / "etc/sudoers.d" / f"90-orchestrate-{name}", f"{name} {user['sudo']}\n", 0o440)
    for key in user.get("ssh_authorized_keys") or []:
        install_authorized_key(root, name, f"{str(key).strip()}\n")


def _home(root: Path, user: str) -> tuple[str, int, int]:
    """(home, uid, gid) of `user` in the host's /etc/passwd; HostError when it has no such user."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == user:
            return fields[5], int(fields[2]), int(fields[3])
    raise HostError(f"no user {user} on the host")


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.chmod(mode)
    tmp.replace(path)
