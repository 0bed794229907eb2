"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.project import REPO, copy_project


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of this project in a temporary directory, to change freely."""
    return copy_project(tmp_path / "project")


@pytest.fixture
def repo_root() -> Path:
    return REPO


# Tests send SIGINT to themselves and to the commands they start (a Ctrl-C). A suite started in the
# background of a non-interactive shell (`make test &` in a script) inherits SIGINT ignored, and an
# ignored signal stays ignored in every child: give the workers and their children Python's own
# Ctrl-C handler back, as on a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# dev's vault password is public on purpose; tests that deploy dev copies need it
os.environ.setdefault("ORCHESTRATE_VAULT_PASSWORD_FILE", str(REPO / "inventories" / "dev" / ".vault-password-dev"))

# No example database: test files run in parallel workers, and a shared .hypothesis/ directory
# written by several processes (and by older versions of a stateful test) replays stale examples.
settings.register_profile("orchestrate", database=None, deadline=None)
settings.load_profile("orchestrate")


# --- the exhaustive deploy model's path count, at the end of every run ---------------------------

#: user property set by tests/unit/models/test_models_process.py (a dict with "paths", ...)
EXHAUSTIVE_PATHS_PROPERTY = "exhaustive_model_paths"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many paths the exhaustive exploration checked.

    The test records the count with `record_property`: user properties travel with the test
    report from pytest-xdist workers to the controller, where output printed by the test
    itself (even under capsys.disabled()) is dropped.
    """
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call" or getattr(report, "outcome", None) != "passed":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name != EXHAUSTIVE_PATHS_PROPERTY or not isinstance(value, dict):
                    continue
                heal = f", {value['remediated']} with a heal remediation" if "remediated" in value else ""
                terminalreporter.write_line(
                    f"state machine: exhaustive exploration checked {value['paths']} paths "
                    f"({value['rollouts']} rollouts of {value['hosts']} hosts, lower bound {value['lower_bound']}"
                    f"{heal}, {value['seconds']} s)")
