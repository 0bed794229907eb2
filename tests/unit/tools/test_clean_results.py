"""orchestrator.tools.clean_results: the key follows every input, stamps are shared and pruned; and
a slow program's version remembered by its file (orchestrator.tools.versions.remembered_version)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.tools import clean_results
from orchestrator.tools.clean_results import ResultKey, remember, remembered
from orchestrator.tools.versions import remembered_version


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "orchestrate" / "verify"


def _project(base: Path, text: str = "resource {}\n") -> Path:
    (base / "modules" / "m").mkdir(parents=True)
    (base / "modules" / "m" / "main.tf").write_text(text)
    (base / "modules" / "m" / "notes.md").write_text("notes\n")
    return base


def _key(project: Path, tool: Path) -> str:
    return ResultKey("check").tool(tool).tree(project / "modules", project,
                                              keep=lambda p: p.suffix == ".tf").hexdigest()


def test_two_copies_of_a_project_share_a_key_and_any_change_makes_a_new_one(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    one, two = _project(tmp_path / "one"), _project(tmp_path / "two")
    assert _key(one, tool) == _key(two, tool)  # where the project lives is not part of it

    (two / "modules" / "m" / "notes.md").write_text("other notes\n")
    assert _key(one, tool) == _key(two, tool)  # a file the check does not read

    (two / "modules" / "m" / "main.tf").write_text("resource { x = 1 }\n")
    assert _key(one, tool) != _key(two, tool)  # content

    three = _project(tmp_path / "three")
    (three / "modules" / "m" / "extra.tf").write_text("")
    assert _key(one, tool) != _key(three, tool)  # a new, even empty, file

    before = _key(one, tool)
    stat = tool.stat()
    os.utime(tool, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _key(one, tool) != before  # another build of the tool

    assert ResultKey("a").text("bc").hexdigest() != ResultKey("ab").text("c").hexdigest()
    assert ResultKey("a").tool(None).hexdigest() != ResultKey("a").tool(tool).hexdigest()
    assert ResultKey("a").tree(tmp_path / "nowhere", tmp_path).hexdigest() != ResultKey("a").hexdigest()


def test_a_clean_result_is_given_back_under_its_key_only(own_cache: Path) -> None:
    assert remembered("checkov", "a" * 64) == ""
    remember("checkov", "a" * 64, "12 resource(s): passed")
    assert remembered("checkov", "a" * 64) == "12 resource(s): passed"
    assert remembered("checkov", "b" * 64) == ""
    assert remembered("promtool", "a" * 64) == ""  # each check its own stamps
    assert (own_cache / f"checkov-{'a' * 32}.ok").is_file()


def test_only_the_newest_stamps_of_a_check_are_kept(own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clean_results, "KEEP", 3)
    remember("other", "f" * 64, "kept: another check")
    for index in range(5):
        key = str(index) * 64
        remember("lint", key, f"run {index}")
        stamp = own_cache / f"lint-{key[:32]}.ok"
        os.utime(stamp, (1_000_000 + index, 1_000_000 + index))  # a stable order of age
    assert [remembered("lint", str(index) * 64) for index in range(5)] == ["", "", "run 2", "run 3", "run 4"]
    assert remembered("other", "f" * 64) == "kept: another check"


def test_a_slow_programs_version_is_asked_once_per_build_of_it(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    program = tmp_path / "lint"
    program.write_text(f"#!/bin/sh\necho asked >> {calls}\necho 'WARNING: PATH altered'\n"
                       "echo 'lint 1.2.3 using core 2.19'\n")
    program.chmod(0o755)
    argv = [str(program), "--version", "--nocolor"]
    assert remembered_version(argv) == "lint 1.2.3"
    assert remembered_version(argv) == "lint 1.2.3"
    assert calls.read_text().count("asked") == 1
    assert remembered_version([str(program), "--version"]) == "lint 1.2.3"  # other arguments: asked again
    assert calls.read_text().count("asked") == 2

    program.write_text(f"#!/bin/sh\necho asked >> {calls}\necho 'lint 1.3.0'\n")  # upgraded in place
    assert remembered_version(argv) == "lint 1.3.0"

    silent = tmp_path / "silent"
    silent.write_text(f"#!/bin/sh\necho asked >> {calls}\nexit 3\n")
    silent.chmod(0o755)
    before = calls.read_text().count("asked")
    assert remembered_version([str(silent), "--version"]) == "unknown (exit 3)"
    assert remembered_version([str(silent), "--version"]) == "unknown (exit 3)"
    assert calls.read_text().count("asked") == before + 2  # an unknown version is not kept


def test_a_damaged_stamp_is_no_result() -> None:
    from orchestrator.monitoring.checks import _earlier as monitoring_earlier
    from orchestrator.verify.checkov import _earlier as checkov_earlier

    for damaged in ("", "{", "[]", '{"version": "checkov 3"}', '{"version": 3, "message": "ok"}'):
        assert checkov_earlier(damaged) is None
    assert checkov_earlier('{"version": "checkov 3", "message": "12 resource(s)"}') == {
        "version": "checkov 3", "message": "12 resource(s)"}
    for damaged in ("", "{", "[]", '{"files": []}', '{"files": [{"name": "x"}], "dashboard": []}'):
        assert monitoring_earlier(damaged) is None
    files, dashboard = monitoring_earlier('{"files": [{"name": "promtool check rules", "ok": true, "command": "c", '
                                          '"detail": "SUCCESS"}], "dashboard": []}') or ([], [])
    assert [(c.name, c.ok) for c in files] == [("promtool check rules", True)] and dashboard == []
