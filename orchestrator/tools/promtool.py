"""Adapter over promtool and amtool, the checkers that ship with Prometheus and Alertmanager.

Each check runs one program and becomes a `ToolCheck`: passed when it exits 0, with its output
as the detail (a program that is missing or runs past its time limit is a failed check, not an
exception). argv are built by pure functions:

    promtool check config FILE        the Prometheus configuration (and the rule files it names)
    promtool check rules FILE         a rule file
    promtool test rules FILE          a rule unit test (run in its directory: rule_files are relative)
    amtool check-config FILE          an Alertmanager configuration
    amtool config routes test --config.file=FILE --verify.receivers=NAME LABEL=VALUE...
                                      which receiver an alert with these labels reaches (exit 1: another)
    prometheus-blackbox-exporter --config.check --config.file=FILE
                                      the blackbox exporter's modules
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import CommandError
from orchestrator.tools.process import run_command

PROMTOOL = "promtool"
AMTOOL = "amtool"

BLACKBOX_EXPORTER = "prometheus-blackbox-exporter"

#: bounds of a single checker run
CHECK_TIMEOUT_S = 60


@dataclass(frozen=True)
class ToolCheck:
    """Outcome of one checker run: its name, whether it passed, its command line and output."""

    name: str
    ok: bool
    command: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "command": self.command, "detail": self.detail}


# --- pure argv builders ---------------------------------------------------------------------


def promtool_check_config_argv(path: Path) -> list[str]:
    """`promtool check config FILE`."""
    return [PROMTOOL, "check", "config", str(path)]


def promtool_check_rules_argv(path: Path) -> list[str]:
    """`promtool check rules FILE`."""
    return [PROMTOOL, "check", "rules", str(path)]


def promtool_test_rules_argv(path: Path) -> list[str]:
    """`promtool test rules NAME`, to be run in the file's directory (its rule_files are relative)."""
    return [PROMTOOL, "test", "rules", path.name]


def amtool_check_config_argv(path: Path) -> list[str]:
    """`amtool check-config FILE`."""
    return [AMTOOL, "check-config", str(path)]


def amtool_routes_test_argv(path: Path, receiver: str, labels: Sequence[str]) -> list[str]:
    """`amtool config routes test`: does an alert with `labels` (`key=value`) reach `receiver`?"""
    return [AMTOOL, "config", "routes", "test", f"--config.file={path}", f"--verify.receivers={receiver}",
            *labels]


def blackbox_check_config_argv(path: Path) -> list[str]:
    """`prometheus-blackbox-exporter --config.check --config.file=FILE`."""
    return [BLACKBOX_EXPORTER, "--config.check", f"--config.file={path}"]


# --- runners --------------------------------------------------------------------------------


def run_check(name: str, argv: list[str], *, cwd: Path | None = None,
              timeout: float = CHECK_TIMEOUT_S) -> ToolCheck:
    """Run one checker; its output becomes the detail, a non-zero exit a failed check."""
    command = shlex.join(argv)
    try:
        result = run_command(argv, cwd=cwd, timeout=timeout, check=False)
    except CommandError as exc:  # not installed, or timed out
        return ToolCheck(name, False, command, exc.message)
    output = (result.stdout + result.stderr).strip()
    return ToolCheck(name, result.returncode == 0, command, output)


def check_config(path: Path) -> ToolCheck:
    """`promtool check config` (also checks the rule files the config names)."""
    return run_check("promtool check config", promtool_check_config_argv(path))


def check_rules(path: Path) -> ToolCheck:
    """`promtool check rules` on a rule file."""
    return run_check("promtool check rules", promtool_check_rules_argv(path))


def test_rules(path: Path) -> ToolCheck:
    """`promtool test rules` on a rule test file (rule_files resolve relative to it)."""
    return run_check("promtool test rules", promtool_test_rules_argv(path), cwd=path.parent)


# pytest would collect a module-level `test_*` function imported into a test module.
test_rules.__test__ = False  # type: ignore[attr-defined]


def check_blackbox_config(path: Path) -> ToolCheck:
    """The blackbox exporter's own check of its configuration."""
    return run_check("blackbox exporter check config", blackbox_check_config_argv(path))


def check_rules_named(path: Path, display: str) -> ToolCheck:
    """`promtool check rules` on an operator's rules file, named by `display` in the result."""
    return run_check(f"promtool check rules {display}", promtool_check_rules_argv(path))


def test_rules_named(path: Path, display: str) -> ToolCheck:
    """`promtool test rules` on an operator's test file (in its directory), named by `display`."""
    return run_check(f"promtool test rules {display}", promtool_test_rules_argv(path), cwd=path.parent)


test_rules_named.__test__ = False  # type: ignore[attr-defined]


def check_alertmanager_config(path: Path) -> ToolCheck:
    """`amtool check-config` on an Alertmanager config."""
    return run_check("amtool check-config", amtool_check_config_argv(path))


def test_route(path: Path, receiver: str, labels: Sequence[str], *, name: str) -> ToolCheck:
    """`amtool config routes test --verify.receivers=RECEIVER LABELS` (fails when another receiver is picked)."""
    return run_check(name, amtool_routes_test_argv(path, receiver, labels))


test_route.__test__ = False  # type: ignore[attr-defined]
