"""The first-boot document of a host (orchestrator.fleet.cloudinit) and how a local host's disk
gets it (orchestrator.fleet.local.userdata), without root: a user that exists already."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.errors import HostError
from orchestrator.fleet.cloudinit import cloud_config, generate_host_key, parse_user_data, user_data
from orchestrator.fleet.local.userdata import SSHD_LOGIN_DROPIN, apply_cloud_config

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrchestrateTestKey orchestrate@test"


def test_a_non_root_login_gets_sudo_and_root_is_disabled() -> None:
    host_key = generate_host_key("root@app-1")
    document = cloud_config(host_key=host_key, login_user="admin", authorized_keys=[KEY + "\n"], default_user=True)
    assert document["users"] == ["default", {"name": "admin", "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
                                             "lock_passwd": True, "ssh_authorized_keys": [KEY]}]
    assert document["disable_root"] is True and document["ssh_pwauth"] is False
    assert document["ssh_keys"] == {"ed25519_private": host_key.private, "ed25519_public": host_key.public}
    assert host_key.private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert host_key.known_hosts_key == " ".join(host_key.public.split()[:2])
    assert host_key.public.endswith(" root@app-1")


def test_root_as_login_user_needs_no_user_entry() -> None:
    document = cloud_config(host_key=generate_host_key("x"), login_user="root", authorized_keys=[KEY])
    assert "users" not in document and document["disable_root"] is False


def test_user_data_is_a_cloud_config_document_that_reads_back() -> None:
    document = cloud_config(host_key=generate_host_key("x"), login_user="admin", authorized_keys=[KEY])
    text = user_data(document)
    assert text.startswith("#cloud-config\n")
    assert parse_user_data(text) == document
    with pytest.raises(ValueError, match="not a #cloud-config document"):
        parse_user_data("#!/bin/sh\necho hi\n")


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/ssh_host_rsa_key").write_text("old")
    (root / "root/.ssh").mkdir(parents=True)
    (root / "root/.ssh/authorized_keys").write_text(KEY + "\n")
    (root / "home/admin").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"root:x:0:0:root:/root:/bin/bash\n"
                                     f"admin:x:{os.getuid()}:{os.getgid()}::/home/admin:/bin/bash\n")
    return root


def test_applying_the_document_makes_the_host_as_cloud_init_would(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    host_key = generate_host_key("root@app-1")
    apply_cloud_config(root, cloud_config(host_key=host_key, login_user="admin", authorized_keys=[KEY]))
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["ssh_host_ed25519_key",
                                                                    "ssh_host_ed25519_key.pub", "sshd_config.d"]
    private = root / "etc/ssh/ssh_host_ed25519_key"
    assert private.read_text() == host_key.private.rstrip("\n") + "\n"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text() == host_key.public + "\n"
    sudoers = root / "etc/sudoers.d/90-orchestrate-admin"
    assert sudoers.read_text() == "admin ALL=(ALL) NOPASSWD:ALL\n" and stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    authorized = root / "home/admin/.ssh/authorized_keys"
    assert authorized.read_text() == KEY + "\n" and stat.S_IMODE(authorized.stat().st_mode) == 0o600
    # root: no key, and sshd refuses it (first value wins: this drop-in sorts before the image's)
    assert not (root / "root/.ssh/authorized_keys").exists()
    assert "PermitRootLogin no\n" in (root / SSHD_LOGIN_DROPIN).read_text()
    assert Path(SSHD_LOGIN_DROPIN).name < "orchestrate.conf"


def test_keys_the_local_host_cannot_apply_are_refused(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="cloud-config keys not applied to local hosts: runcmd"):
        apply_cloud_config(_fake_root(tmp_path), {"runcmd": ["true"]})
