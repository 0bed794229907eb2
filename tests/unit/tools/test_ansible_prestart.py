"""The prestarted ansible-playbook Python (orchestrator/tools/ansible_prestart.py and
ansible_plugins/prestarted_playbook.py), the program's verb (orchestrator/entry.py), and the event
stream's reader (orchestrator/tools/runner_pipe.py): what each refuses and what it keeps."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.entry import PRESTART_VERBS, verb
from orchestrator.tools import ansible_prestart, runner_pipe
from orchestrator.tools.ansible_prestart import Prestarted, interpreter_of
from tests.support.project import load_file_module

SCRIPT = ansible_prestart.SCRIPT


def test_the_warm_up_reads_no_ansible_configuration() -> None:
    # ansible.constants reads the configuration and the environment: it must come after the request
    code = (f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import prestarted_playbook as p; "
            "p.warm(); import json; print(json.dumps([sorted(m for m in sys.modules if m.startswith('ansible')), "
            "'ansible.constants' in sys.modules, 'ansible.utils.display' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules, constants, display = json.loads(out)
    assert not constants and not display
    # and it did import a good part of Ansible
    assert {"ansible.config.manager", "ansible._internal._templating"} <= set(modules)
    assert len(modules) > 50


def test_without_a_request_it_exits_quietly() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""


@pytest.mark.parametrize(("argv", "expected"), [
    (["deploy", "dev"], "deploy"),
    (["--project-dir", "up", "status", "dev"], "status"),
    (["-q", "--debug", "up", "prod"], "up"),
    (["--project-dir", "/p", "-v", "deploy", "dev", "--release", "x"], "deploy"),
    (["--help"], None),
    (["--version", "deploy"], None),
    ([], None),
])
def test_the_verb_is_read_past_the_global_options(argv: list[str], expected: str | None) -> None:
    assert verb(argv) == expected


def test_only_the_verbs_that_may_run_a_playbook_prestart() -> None:
    assert frozenset({"deploy", "up"}) == PRESTART_VERBS


def test_the_interpreter_is_the_programs_shebang(tmp_path: Path) -> None:
    (tmp_path / "prog").write_text("#!/opt/py/bin/python3\nprint()\n")
    (tmp_path / "prog").chmod(0o755)
    (tmp_path / "env-prog").write_text("#!/usr/bin/env python3\n")
    (tmp_path / "env-prog").chmod(0o755)
    (tmp_path / "binary").write_bytes(b"\x7fELF\x02")
    (tmp_path / "binary").chmod(0o755)
    assert interpreter_of(str(tmp_path / "prog")) == "/opt/py/bin/python3"
    assert interpreter_of(str(tmp_path / "env-prog")) is None  # not one interpreter named by path
    assert interpreter_of(str(tmp_path / "binary")) is None
    assert interpreter_of(str(tmp_path / "missing")) is None


def _program(tmp_path: Path, interpreter: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ansible-playbook").write_text(f"#!{interpreter}\n")
    (bin_dir / "ansible-playbook").chmod(0o755)
    return {**os.environ, "PATH": str(bin_dir)}


def test_it_is_not_handed_a_run_of_another_python(tmp_path: Path) -> None:
    waiting = Prestarted()
    try:
        env = _program(tmp_path, "/usr/bin/python3.9")
        assert waiting.hand_over(["ansible-playbook", "pb.yml"], str(tmp_path), env) is None
        assert waiting.proc.returncode == 0  # closed unused: it read end-of-file and exited
    finally:
        waiting.close()
        os.close(waiting.events_read)
        os.close(waiting.events_write)


def test_it_is_not_handed_a_run_with_other_python_settings(tmp_path: Path) -> None:
    waiting = Prestarted()
    try:
        env = {**_program(tmp_path, sys.executable), "PYTHONHASHSEED": "123"}
        assert waiting.hand_over(["ansible-playbook", "pb.yml"], str(tmp_path), env) is None
        assert waiting.proc.returncode == 0
        # a program not on the run's PATH is not handed over either
        again = Prestarted()
        try:
            assert again.hand_over(["ansible-playbook"], str(tmp_path), {"PATH": str(tmp_path / "none")}) is None
        finally:
            again.close()
            os.close(again.events_read)
            os.close(again.events_write)
    finally:
        waiting.close()
        os.close(waiting.events_read)
        os.close(waiting.events_write)


def test_take_gives_the_waiting_one_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ansible_prestart.SWITCH_ENV, "0")
    ansible_prestart.prestart()
    assert ansible_prestart.take() is None  # turned off
    monkeypatch.delenv(ansible_prestart.SWITCH_ENV)
    ansible_prestart.prestart()
    first = ansible_prestart.take()
    assert first is not None and ansible_prestart.take() is None
    first.close()
    os.close(first.events_read)
    os.close(first.events_write)
    assert first.proc.returncode == 0


# --- the event stream ------------------------------------------------------------------------------


def test_the_child_env_names_orchestrates_callback_instead_of_ansible_runners() -> None:
    from ansible_runner.utils import get_callback_dir

    prepared = {"ANSIBLE_CALLBACK_PLUGINS": os.pathsep.join(["/site/callbacks", get_callback_dir()]),
                "ANSIBLE_STDOUT_CALLBACK": "awx_display", "AWX_ISOLATED_DATA_DIR": "/run/a",
                "RUNNER_OMIT_EVENTS": "False", "ANSIBLE_CONFIG": "/run/ansible.cfg"}
    env = runner_pipe.child_env(prepared, 7)
    assert env["ANSIBLE_STDOUT_CALLBACK"] == "orchestrate_events"
    assert env["ANSIBLE_CALLBACK_PLUGINS"].split(os.pathsep) == [str(runner_pipe.CALLBACK_DIR), "/site/callbacks"]
    assert env["ORCHESTRATE_EVENTS_FD"] == "7" and env["ANSIBLE_CONFIG"] == "/run/ansible.cfg"
    assert "AWX_ISOLATED_DATA_DIR" not in env and "RUNNER_OMIT_EVENTS" not in env
    assert (runner_pipe.CALLBACK_DIR / "orchestrate_events.py").is_file()


UUIDS = ["0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7",
         "16fd2706-8baf-433b-82eb-8c7fada847da"]


def test_events_are_numbered_handed_over_and_kept_as_the_handler_says(tmp_path: Path) -> None:
    seen: list[tuple[int, str]] = []

    def handler(event: dict[str, object]) -> bool:
        seen.append((int(event["counter"]), str(event["event"])))  # type: ignore[call-overload]
        return event["event"] != "runner_on_start"

    writer = runner_pipe.EventWriter(tmp_path, "run-1", handler)
    lines = "".join(json.dumps({"event": kind, "uuid": uuid, "event_data": {}}) + "\n"
                    for kind, uuid in zip(["playbook_on_start", "runner_on_start", "runner_on_ok"], UUIDS, strict=True))
    # the stream arrives cut anywhere
    for start in range(0, len(lines), 7):
        writer.feed(lines[start:start + 7])
    writer.close()
    assert seen == [(1, "playbook_on_start"), (2, "runner_on_start"), (3, "runner_on_ok")]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"1-{UUIDS[0]}.json", f"3-{UUIDS[2]}.json"]
    event = json.loads((tmp_path / kept[1]).read_text())
    assert event["counter"] == 3 and event["runner_ident"] == "run-1"
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.iterdir())


def test_what_is_not_an_event_is_not_one(tmp_path: Path) -> None:
    seen: list[object] = []
    writer = runner_pipe.EventWriter(tmp_path / "events", "run-2", lambda e: seen.append(e) or True)
    (tmp_path / "events").mkdir()
    writer.feed("not json\n[1, 2]\n")
    writer.feed(json.dumps({"event": "runner_on_ok", "uuid": "../../escape"}) + "\n")
    writer.feed(json.dumps({"event": 3, "uuid": UUIDS[0]}) + "\n")
    writer.feed(json.dumps({"event": "runner_on_ok", "uuid": UUIDS[1]})[:-3])  # cut off at the end
    writer.close()
    assert seen == []
    assert list((tmp_path / "events").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["events"]


# --- the callback's lines ---------------------------------------------------------------------------


def _callback() -> Any:
    return load_file_module(runner_pipe.CALLBACK_DIR / "orchestrate_events.py", "orchestrate_events_under_test")


class _Vaulted:
    """Stands in for Ansible's EncryptedString: str() would decrypt it."""

    _ciphertext = b"$ANSIBLE_VAULT;1.1;AES256\n3132"

    def __str__(self) -> str:
        raise AssertionError("decrypted")


def test_a_line_holds_data_never_a_decrypted_secret() -> None:
    callback = _callback()
    res = {"when": datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC), "raw": b"\xff\x00ok", "set": {3},
           "pair": (1, "a"), "secret": _Vaulted(), (1, 2): "a key JSON cannot have", "fine": "yes"}
    line = callback.encode({"event": "runner_on_ok", "event_data": {"res": res}})
    assert "\n" not in line
    back = json.loads(line)["event_data"]["res"]
    assert back == {"when": "2026-12-04T00:00:00+00:00", "raw": "\ufffd\x00ok", "set": [3], "pair": [1, "a"],
                    "secret": {"__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256\n3132"}, "fine": "yes"}


def test_a_result_that_contains_itself_is_replaced_not_lost() -> None:
    callback = _callback()
    res: dict[str, Any] = {"msg": "loop"}
    res["self"] = res
    back = json.loads(callback.encode({"event": "runner_on_failed", "uuid": UUIDS[0],
                                       "event_data": {"host": "web-1", "res": res}}))
    assert back["event"] == "runner_on_failed" and back["event_data"]["host"] == "web-1"
    assert back["event_data"]["res"] == {"msg": "(this result could not be written as JSON)"}


def test_no_log_results_are_censored_before_they_are_written() -> None:
    callback = _callback()
    assert callback._censored({"_ansible_no_log": True, "stdout": "hush"}) == {"censored": callback.CENSORED}
    mixed = {"results": [{"_ansible_no_log": True, "item": "hush"}, {"item": "shown"}], "changed": True}
    assert callback._censored(mixed) == {"results": [{"censored": callback.CENSORED}, {"item": "shown"}],
                                         "changed": True}
    assert mixed["results"][0]["item"] == "hush"  # Ansible's own result is left as it was
