"""Privilege escalation, checked on the source: cloud hosts log in as a user with sudo, so every
play that runs on the hosts becomes root, and every task delegated to the controller does not (the
controller has no sudo to offer, and needs none for its own files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.project import REPO

PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))
#: the scenarios whose hosts are made with a non-root login (rust_service logs in as root and makes
#: its own login user, then becomes from there: its converge says so)
MOLECULE_HOST_PLAYS = sorted(p for name in ("rollback", "backup_restore", "monitoring")
                             for p in (REPO / "molecule" / name).glob("*.yml") if p.name != "molecule.yml")
TASK_FILES = sorted([*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("roles/*/handlers/*.yml"), *PLAYBOOKS,
                     *REPO.glob("molecule/*/*.yml"), *REPO.glob("molecule/resources/tasks/*.yml")])


class _Loader(yaml.SafeLoader):
    """YAML with Ansible's `!unsafe` and `!vault` tags read as plain values."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node)
                        if isinstance(node, yaml.ScalarNode) else None)
_Loader.add_constructor("!vault", lambda loader, node: "vaulted")


def _load(path: Path) -> list[Any]:
    data = yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader with two more tags
    return data if isinstance(data, list) else []


def _tasks(items: list[Any]) -> Iterator[dict[str, Any]]:
    """Every task, blocks and plays' task lists included."""
    for item in items:
        if not isinstance(item, dict):
            continue
        yield item
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            yield from _tasks(item.get(key) or [])


def _host_plays(path: Path) -> list[dict[str, Any]]:
    return [play for play in _load(path) if isinstance(play, dict) and "hosts" in play
            and play["hosts"] != "localhost" and play.get("connection") != "local"]


@pytest.mark.parametrize("path", [*PLAYBOOKS, *MOLECULE_HOST_PLAYS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_play_on_the_hosts_becomes_root(path: Path) -> None:
    for play in _host_plays(path):
        assert play.get("become") is True, f"{path.relative_to(REPO)}: play {play.get('name')!r} lacks become: true"


def test_the_shipped_playbooks_all_run_on_the_hosts_somewhere() -> None:
    # the check above must see plays: a refactor that hides them (imports only) would pass it vacuously
    assert sum(len(_host_plays(p)) for p in PLAYBOOKS) >= 10


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_delegated_to_the_controller_do_not_become(path: Path) -> None:
    for task in _tasks(_load(path)):
        if task.get("delegate_to") == "localhost":
            assert task.get("become") is False, \
                f"{path.relative_to(REPO)}: task {task.get('name')!r} runs on the controller without become: false"


def test_scenarios_on_non_root_hosts_name_their_login_user() -> None:
    users = {name: (yaml.safe_load((REPO / "molecule" / name / "molecule.yml").read_text())["platforms"][0]
                    .get("login_user", "root"))
             for name in ("rollback", "backup_restore", "monitoring")}
    assert users == {"rollback": "admin", "backup_restore": "admin", "monitoring": "admin"}
