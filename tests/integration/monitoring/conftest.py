"""Fixtures of the monitoring integration tests (helpers: ./helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes a test starts (Prometheus, Alertmanager, targets), all killed at teardown."""
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()
