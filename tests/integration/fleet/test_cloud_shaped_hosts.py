"""Local hosts shaped like cloud images (terraform.vars.ssh_user other than root): the login user
has passwordless sudo and the controller's key, root's SSH login is refused, and the host's only
SSH host key is the one the controller generated and put in its cloud-config (already in
known_hosts before the first connection)."""

from __future__ import annotations

import pytest

from tests.support.fleet import MakeFleet

pytestmark = [pytest.mark.integration, pytest.mark.hosts]

ADMIN = {"terraform": {"vars": {"ssh_user": "admin"}}}


def test_a_host_made_for_admin_refuses_root_and_lets_admin_sudo(fleet_factory: MakeFleet) -> None:
    fleet = fleet_factory(app_count=1, overrides=ADMIN)
    (host,) = fleet.hosts
    assert fleet.login_user == "admin"
    whoami = fleet.ssh(host, "id -un", user="admin")
    assert whoami.stdout.strip() == "admin"
    assert fleet.ssh(host, "id -un").stdout.strip() == "root"  # through sudo -n: no password asked
    refused = fleet.ssh(host, "true", user="root", check=False)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    # root has no key to log in with, and sshd refuses root whatever the key
    facts = fleet.ssh(host, "test -e /root/.ssh/authorized_keys && echo present || echo absent;"
                            " sshd -T | grep -i '^permitrootlogin'; ls /etc/ssh/ | grep ssh_host_")
    lines = facts.stdout.split()
    assert lines[:3] == ["absent", "permitrootlogin", "no"]
    assert sorted(lines[3:]) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    # the one host key is the one known_hosts held before the first connection
    served = fleet.ssh(host, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    known = [line.split()[1:3] for line in fleet.known_hosts.read_text().splitlines()
             if line.startswith(host.address + " ")]
    assert known == [served]


def test_a_root_fleet_still_logs_in_as_root(fleet_factory: MakeFleet) -> None:
    fleet = fleet_factory(app_count=1)
    (host,) = fleet.hosts
    assert fleet.login_user == "root"
    assert fleet.ssh(host, "id -un").stdout.strip() == "root"
    assert fleet.ssh(host, "id admin", check=False).returncode != 0

