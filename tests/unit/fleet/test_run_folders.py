"""Run folders: the newest `keep_run_folders` stay; a run still going is never removed (pure + tmp dirs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator.fleet.playbooks import STALE_AFTER, folders_to_remove, rotate_run_folders


def test_the_oldest_finished_folders_go() -> None:
    now = 10_000.0
    folders = {f"run-{i}": (now - 100 + i, True) for i in range(10)}
    assert folders_to_remove(folders, 3, now) == [f"run-{i}" for i in range(7)]
    assert folders_to_remove(folders, 10, now) == []


def test_a_run_without_a_result_stays_until_it_is_stale() -> None:
    now = 100_000.0
    folders = {"old-running": (now - 60, False), "new-1": (now - 2, True), "new-2": (now - 1, True),
               "dead": (now - STALE_AFTER - 1, False)}
    assert folders_to_remove(folders, 2, now) == ["dead"]


def test_rotation_on_disk(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i in range(6):
        folder = runs / f"2026120{i}T000000Z-abc"
        (folder / "artifacts" / folder.name).mkdir(parents=True)
        if i != 0:
            (folder / "artifacts" / folder.name / "rc").write_text("0")
        stamp = time.time() - 1000 + i
        os.utime(folder, (stamp, stamp))
    removed = rotate_run_folders(runs, 2)
    # the oldest has no result yet (a run still going somewhere): it stays
    assert removed == [f"2026120{i}T000000Z-abc" for i in (1, 2, 3)]
    assert sorted(p.name for p in runs.iterdir()) == [f"2026120{i}T000000Z-abc" for i in (0, 4, 5)]
    assert rotate_run_folders(tmp_path / "missing", 2) == []
