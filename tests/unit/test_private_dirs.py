"""Private directories in shared places (SSH control sockets in /tmp, the Molecule hosts' dir in
/var/tmp): made 0700 by the tool, refused when someone else made them first."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.files import UnsafeDirectory, private_dir, ssh_control_dir
from orchestrator.tools import ansible
from tests.support import molecule_hosts

NOBODY = 65534


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A world-writable sticky directory, like /tmp."""
    tmp_path.chmod(0o1777)
    return tmp_path


@pytest.fixture
def umask_zero() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def foreign_dir(path: Path) -> Path:
    """`path` made by another user (needs root to chown)."""
    if os.geteuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    return path


def test_a_missing_directory_is_created_0700(shared: Path, umask_zero: None) -> None:
    made = private_dir(shared / "orch-cp-0")
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    assert private_dir(made) == made  # and used as it is afterwards


def test_a_directory_of_another_user_is_refused(shared: Path) -> None:
    path = foreign_dir(shared / "orch-cp-0")
    with pytest.raises(UnsafeDirectory) as caught:
        private_dir(path)
    assert "belongs to" in caught.value.message and f"uid {NOBODY}" in caught.value.message
    assert caught.value.hint is not None and "rm -rf" in caught.value.hint


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_directory_others_may_write_to_is_refused(shared: Path, mode: int) -> None:
    path = shared / "orch-cp-0"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(UnsafeDirectory, match=f"mode {mode:04o} lets others write"):
        private_dir(path)


def test_a_symlink_or_a_file_is_refused(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (shared / "link").symlink_to(elsewhere)
    with pytest.raises(UnsafeDirectory, match="is a symlink"):
        private_dir(shared / "link")
    (shared / "file").write_text("")
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        private_dir(shared / "file")


def test_our_own_directory_readable_by_others_is_tightened(shared: Path) -> None:
    path = shared / "orchestrate-molecule"
    path.mkdir()
    path.chmod(0o755)
    private_dir(path)
    assert path.stat().st_mode & 0o777 == 0o700


def test_a_playbook_run_refuses_a_foreign_control_path_dir(shared: Path, tmp_path_factory: pytest.TempPathFactory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    control = foreign_dir(shared / "orch-cp-0")
    monkeypatch.setattr(ansible, "ssh_control_dir", lambda: control)
    project = tmp_path_factory.mktemp("project")
    (project / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (project / "inventory.yml").write_text("all: {}\n")
    run = ansible.PlaybookRun(playbook=project / "site.yml", inventory=project / "inventory.yml",
                              project_dir=project, runs_dir=project / "runs")
    with pytest.raises(UnsafeDirectory, match="belongs to"):
        ansible.run_playbook(run)
    assert ansible.AnsibleSettings.tuned().control_path_dir == str(control)
    assert str(ssh_control_dir()) == f"/tmp/orch-cp-{os.getuid()}"


def test_the_molecule_hosts_dir_is_checked_before_use(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = foreign_dir(shared / "orchestrate-molecule")
    monkeypatch.setattr(molecule_hosts, "BASE_DIR", base)
    with pytest.raises(UnsafeDirectory, match="belongs to"):
        molecule_hosts.base_dir()
    with pytest.raises(UnsafeDirectory):
        molecule_hosts.build(shared, "hello")  # before any cached build in it is trusted
