"""A host's first-boot input, as cloud-init reads it: the login user and the SSH host key.

The controller makes every host's SSH host key itself, so `known_hosts` is written before the first
connection and checked strictly (no trust on first use). The key reaches the host through the
cloud-config document of this module:

- AWS instances get it as user data; cloud-init's `users` and `ssh_keys` modules apply it at first
  boot (terraform/modules/aws_fleet, `user_data`);
- local hosts get the same document applied to their disk before their first boot
  (orchestrator.fleet.local.userdata), so the path of cloud hosts (a non-root login user with sudo,
  root's login refused, a host key from user data) runs on this machine too.

Pure: nothing here touches a file or a host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

#: sudo rule of a non-root login user: what cloud images give their default user
NOPASSWD_SUDO = "ALL=(ALL) NOPASSWD:ALL"


@dataclass(frozen=True)
class HostKey:
    """An ed25519 SSH host key pair: the private key in OpenSSH PEM form, the public one as a line."""

    private: str
    public: str

    @property
    def known_hosts_key(self) -> str:
        """`ssh-ed25519 AAAA...` (type and key, no comment): what a known_hosts line names."""
        return " ".join(self.public.split()[:2])


def generate_host_key(comment: str) -> HostKey:
    """A new ed25519 host key pair, generated in-process (no ssh-keygen per host)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return HostKey(private=private, public=f"{public.decode()} {comment}")


def cloud_config(*, host_key: HostKey, login_user: str, authorized_keys: Sequence[str],
                 default_user: bool = False) -> dict[str, Any]:
    """The cloud-config document of one host (see cloud-init's `users`, `ssh` modules).

    - `ssh_keys`: the controller's host key, the only one the host has (`ssh_deletekeys`, no
      generated ones), so the client can only meet the key `known_hosts` holds;
    - `users`: a non-root `login_user` with passwordless sudo and `authorized_keys` (after the
      image's `default` user when `default_user`: cloud images create theirs from the EC2 key
      pair); root needs no entry;
    - `disable_root`: root's SSH login is refused whenever the login user is not root.
    """
    document: dict[str, Any] = {}
    if login_user != "root":
        user = {"name": login_user, "sudo": NOPASSWD_SUDO, "shell": "/bin/bash", "lock_passwd": True,
                "ssh_authorized_keys": [key.strip() for key in authorized_keys]}
        document["users"] = (["default"] if default_user else []) + [user]
    document.update({
        "disable_root": login_user != "root",
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": host_key.private, "ed25519_public": host_key.public},
    })
    return document


def user_data(document: Mapping[str, Any]) -> str:
    """The document as user data: `#cloud-config` and YAML."""
    return "#cloud-config\n" + yaml.safe_dump(dict(document), sort_keys=False, width=1_000)


def parse_user_data(text: str) -> dict[str, Any]:
    """The cloud-config document of `text` (ValueError unless it is `#cloud-config` YAML)."""
    if not text.startswith("#cloud-config\n"):
        raise ValueError("user data is not a #cloud-config document")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError("user data is not a mapping")
    return document
