"""promtool/amtool argv builders and the checker runner (missing programs are failed checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.tools import promtool


def test_argv_builders() -> None:
    path = Path("/x/prometheus.yml")
    assert promtool.promtool_check_config_argv(path) == ["promtool", "check", "config", "/x/prometheus.yml"]
    assert promtool.promtool_check_rules_argv(Path("/x/r.yml")) == ["promtool", "check", "rules", "/x/r.yml"]
    # run in the test file's directory: its rule_files are relative to it
    assert promtool.promtool_test_rules_argv(Path("/x/rules/t.yml")) == ["promtool", "test", "rules", "t.yml"]
    assert promtool.amtool_check_config_argv(Path("/x/am.yml")) == ["amtool", "check-config", "/x/am.yml"]
    assert promtool.amtool_routes_test_argv(Path("/x/am.yml"), "heal", ["alertname=ServiceDown", "env=dev"]) == [
        "amtool", "config", "routes", "test", "--config.file=/x/am.yml", "--verify.receivers=heal",
        "alertname=ServiceDown", "env=dev"]


def test_run_check_passes_on_exit_0_with_the_output_as_detail(tmp_path: Path) -> None:
    good = promtool.run_check("ok", [sys.executable, "-c", "print('SUCCESS')"], cwd=tmp_path)
    assert good == promtool.ToolCheck("ok", True, good.command, "SUCCESS")
    bad = promtool.run_check("bad", [sys.executable, "-c", "import sys; sys.exit('FAILED: x')"])
    assert not bad.ok and "FAILED: x" in bad.detail
    assert bad.as_dict() == {"name": "bad", "ok": False, "command": bad.command, "detail": bad.detail}


@pytest.mark.parametrize("argv", [["no-such-promtool-here", "check", "config", "x"]])
def test_a_missing_program_is_a_failed_check_not_an_exception(argv: list[str]) -> None:
    result = promtool.run_check("promtool check config", argv)
    assert not result.ok and "program not found" in result.detail
    assert result.command == "no-such-promtool-here check config x"
