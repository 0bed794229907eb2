"""The switch without a playbook: the bootstrap a host runs, its answer, the evidence it leaves.

The bootstrap runs here in a Python without site-packages (`-S`), as on a host where Ansible is
not installed: the module and its module_utils arrive on stdin and nothing else is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.loader import Project
from orchestrator.fleet.inventory import Host
from orchestrator.fleet.remote import Connection, HostRun
from orchestrator.release.direct import (
    BOOTSTRAP,
    ENV_FILE_MODULE,
    MODULE_UTILS,
    Call,
    Module,
    batch_size,
    call_status,
    keep_evidence,
    module_sources,
    remote_command,
    result_line,
    rollout_batches,
    session_input,
    session_outcome,
    session_timeout,
    stop_rule,
    switch_params,
)
from orchestrator.release.results import RELEASE_TASK
from tests.support.project import REPO
from tests.unit.roles.helpers import load_role_module


def _run_calls(calls: list[Call], *, magic: str | None = None) -> list[dict[str, Any]]:
    """`calls` through BOOTSTRAP in a fresh interpreter without site-packages: the results printed
    (`magic`: the MAGIC_NUMBER the controller claims, to stand for a host with another Python)."""
    first, *rest = session_input(module_sources(REPO), calls)
    if magic is not None:
        first = (json.dumps({**json.loads(first), "magic": magic}) + "\n").encode()
    stdin = b"".join([first, *rest])
    proc = subprocess.run([sys.executable, "-S", "-c", BOOTSTRAP], input=stdin, capture_output=True, timeout=60,
                          check=False)
    found = [result_line(line) for line in proc.stdout.decode().splitlines()]
    return [r for r in found if r is not None]


def _run_bootstrap(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One rust_release call through BOOTSTRAP: (status, result)."""
    results = _run_calls([Call(RELEASE_TASK, "rust_release", params)])
    assert len(results) == 1
    return call_status(results[0]), results[0]


def _release(base: Path, rid: str, stamp: float) -> None:
    directory = base / "releases" / rid
    directory.mkdir(parents=True)
    (directory / "hello").write_text("#!/bin/sh\n")
    (directory / "RELEASE").write_text(json.dumps({"id": rid, "deployed_at": stamp}))


def test_the_module_runs_from_stdin_without_ansible(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    for index, rid in enumerate(["0.1.0-aaaaaaaaaaaa", "0.2.0-bbbbbbbbbbbb", "0.3.0-cccccccccccc",
                                 "0.4.0-dddddddddddd"]):
        _release(base, rid, 1000.0 + index)
    (base / "current").symlink_to("releases/0.4.0-dddddddddddd")
    status, result = _run_bootstrap({"state": "cleanup", "service": "hello", "base_dir": str(base),
                                     "keep_releases": 2})
    assert status == "changed", result
    assert result["removed"] == ["0.1.0-aaaaaaaaaaaa", "0.2.0-bbbbbbbbbbbb"]
    assert sorted(os.listdir(base / "releases")) == ["0.3.0-cccccccccccc", "0.4.0-dddddddddddd"]


@pytest.mark.parametrize("magic", [None, "00000000"], ids=["precompiled", "compiled-on-the-host"])
def test_the_modules_load_from_the_controllers_code_or_from_source(tmp_path: Path, magic: str | None) -> None:
    base = tmp_path / "opt"
    _release(base, "0.1.0-aaaaaaaaaaaa", 1000.0)
    (base / "current").symlink_to("releases/0.1.0-aaaaaaaaaaaa")
    (result,) = _run_calls([Call(RELEASE_TASK, "rust_release", {"state": "status", "service": "hello",
                                                                   "base_dir": str(base)})], magic=magic)
    assert call_status(result) == "ok", result
    assert result["release"] == "0.1.0-aaaaaaaaaaaa"


def test_a_restart_needs_a_current_release(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    _release(base, "0.1.0-aaaaaaaaaaaa", 1000.0)
    status, result = _run_bootstrap({"state": "restart", "service": "hello", "base_dir": str(base)})
    assert status == "failed"
    assert f"no release is current in {base}: nothing to restart" in result["msg"]


def test_a_rollback_to_a_release_that_is_not_there_fails_naming_what_is(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    _release(base, "0.1.0-aaaaaaaaaaaa", 1000.0)
    (base / "current").symlink_to("releases/0.1.0-aaaaaaaaaaaa")
    status, result = _run_bootstrap({"state": "rollback", "service": "hello", "base_dir": str(base),
                                     "release_id": "0.9.0-eeeeeeeeeeee"})
    assert status == "failed"
    assert "0.9.0-eeeeeeeeeeee is not on the host (available: 0.1.0-aaaaaaaaaaaa)" in result["msg"]
    assert os.readlink(base / "current") == "releases/0.1.0-aaaaaaaaaaaa"


@pytest.mark.parametrize(("params", "message"), [
    ({"state": "cleanup", "service": "hello", "colour": "red"}, "unsupported parameters: colour"),
    ({"state": "cleanup", "service": "hello", "port": "8080"}, "port: expected an integer"),
    ({"state": "cleanup", "service": "hello", "restart": "yes"}, "restart: expected true or false"),
    ({"state": "present", "service": "hello"}, "missing: release_id, sha256"),
    ({"state": "destroy", "service": "hello"}, "state: must be one of"),
    ({"state": "cleanup"}, "missing required parameter: service"),
])
def test_parameters_are_checked_as_ansible_checks_them(params: dict[str, Any], message: str) -> None:
    module = load_role_module("rust_release")
    result = module.run_direct(params)
    assert result["failed"] is True
    assert message in result["msg"]


def test_switch_params_are_the_modules_options(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    module = load_role_module("rust_release")
    params = switch_params(loaded, "0.1.0-aaaaaaaaaaaa", "-")
    checked = module.direct_params(params)  # raises on an option the module does not know
    assert checked["state"] == "rollback"
    assert checked["release_id"] == "0.1.0-aaaaaaaaaaaa"
    assert checked["previous_id"] == "-"
    assert checked["base_dir"] == "/opt/hello"
    assert checked["health_timeout"] == 10.0
    assert checked["allowed_signers"] == "/etc/orchestrate/hello.release-signers"
    # no target: the host's previous release (the module reads its `previous` link)
    assert "release_id" not in switch_params(loaded, None)


def test_the_answer_of_a_session() -> None:
    def ended(code: int | None, out: str = "", err: str = "", error: str = "") -> tuple[str, dict[str, Any]]:
        return session_outcome(HostRun("h", "10.0.0.1", code, out, err, 0.1, error=error))

    assert ended(None, error="timed out after 80 s") == ("unreachable", {"msg": "timed out after 80 s",
                                                                         "unreachable": True})
    assert ended(255, "", "Connection refused", "ssh: connect to host: Connection refused")[0] == "unreachable"
    status, result = ended(1, "", "Traceback ...\nNameError: boom")
    assert status == "failed"
    assert "ended without a result (exit 1)" in result["msg"] and "NameError: boom" in result["msg"]
    assert result_line('orchestrate-result {"changed": true}') == {"changed": True}
    assert result_line('orchestrate-result [1]') is None
    assert result_line('{"changed": true}') is None
    assert [call_status(r) for r in ({"changed": True}, {}, {"failed": True, "changed": True})] == [
        "changed", "ok", "failed"]


def test_a_release_change_writes_the_env_file_receives_the_executable_and_stops_at_a_failure(
        tmp_path: Path) -> None:
    base = tmp_path / "opt"
    base.mkdir()
    payload = b"#!/bin/sh\necho hello\n"
    digest = __import__("hashlib").sha256(payload).hexdigest()
    env_file = tmp_path / "hello.env"
    receive = {"service": "hello", "base_dir": str(base), "release_id": "0.2.0-bbbbbbbbbbbb", "sha256": digest}
    results = _run_calls([
        Call("env", "rust_env_file", {"path": str(env_file), "env": {"GREETING": 'hi "there" $x'}, "header": "# h"}),
        Call("copy", "rust_release", {**receive, "size": len(payload)}, receive=payload),
        Call("status", "rust_release", {"state": "status", "service": "hello", "base_dir": str(base),
                                        "port": 1}, restart_if_changed=(0,)),
    ])
    assert [call_status(r) for r in results][:2] == ["changed", "changed"]
    assert results[0]["keys_changed"] == ["GREETING"] and "hi" not in json.dumps(results[0])
    assert env_file.read_text() == '# h\nGREETING="hi \\"there\\" \\$x"\n'
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    executable = base / "releases" / "0.2.0-bbbbbbbbbbbb" / "hello"
    assert executable.read_bytes() == payload and os.access(executable, os.X_OK)
    assert len(results) == 3  # the third call ran (status reads; its restart flag came from the first)
    # again: nothing changes, whatever is sent; then bytes that do not match are refused
    again = _run_calls([Call("copy", "rust_release", {**receive, "size": 0}, receive=b"")])
    assert call_status(again[0]) == "ok"
    bad = _run_calls([
        Call("copy", "rust_release", {**receive, "release_id": "0.3.0-cccccccccccc", "size": 3}, receive=b"bad"),
        Call("never", "rust_env_file", {"path": str(tmp_path / "never.env"), "env": {}}),
    ])
    assert len(bad) == 1 and bad[0]["failed"] and "does not match" in bad[0]["msg"]
    assert not (base / "releases" / "0.3.0-cccccccccccc" / "hello").exists()
    assert not (tmp_path / "never.env").exists()
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []


def test_batches_and_their_stop_rule_follow_deploy_yml() -> None:
    hosts = [Host(f"app-{i}", f"10.0.0.{i}", ("app",)) for i in range(1, 8)]
    assert batch_size("34%", 7) == 2 and batch_size("10%", 7) == 1 and batch_size(3, 7) == 3
    batches = rollout_batches(hosts, ["app-1"], "50%")
    assert [[h.name for h in b] for b in batches] == [["app-1"], ["app-2", "app-3", "app-4"],
                                                       ["app-5", "app-6", "app-7"]]
    assert [[h.name for h in b] for b in rollout_batches(hosts[:2], [], 1)] == [["app-1"], ["app-2"]]
    strict, tolerant = stop_rule(["app-1"], 0), stop_rule(["app-1"], 40)
    assert strict(batches[1], set()) is False and strict(batches[1], {"app-2"}) is True
    assert tolerant(batches[1], {"app-2"}) is False  # 33% of the batch
    assert tolerant(batches[1], {"app-2", "app-3"}) is True  # 67%
    assert tolerant(batches[0], {"app-1"}) is True  # the canary stops at any failure


def test_evidence_is_kept_per_host_and_only_the_known_items(tmp_path: Path) -> None:
    kept = keep_evidence(tmp_path / "ev", "app-1", {"evidence": {"health": "GET -> 500", "journal": "log",
                                                                 "../escape": "x", "status": 3}})
    assert kept == tmp_path / "ev" / "app-1"
    assert sorted(p.name for p in kept.iterdir()) == ["health.txt", "journal.txt"]
    assert (kept / "health.txt").read_text() == "GET -> 500"
    assert keep_evidence(tmp_path / "ev", "app-2", {"msg": "no evidence"}) is None
    assert keep_evidence(None, "app-3", {"evidence": {"health": "x"}}) is None


def test_the_command_line_is_fixed_and_the_values_travel_on_stdin() -> None:
    def conn(user: str) -> Connection:
        return Connection(user=user, key=Path("/k"), known_hosts=None, guard=lambda a: a)

    assert remote_command(conn("root")).startswith("/usr/bin/python3 -S -c ")
    assert remote_command(conn("admin")).startswith("sudo -n -- /usr/bin/python3 -S -c ")
    hostile = {"state": "rollback", "service": "hello", "release_id": "$(reboot)'; rm -rf / #"}
    (line,) = session_input([Module("m", "x = 1")], [Call("t", "m", hostile)])
    assert json.loads(line)["calls"][0]["params"] == hostile
    payload = b"\x7fELF..."
    chunks = session_input([], [Call("t", "m", {}, receive=payload), Call("u", "m", {}, receive=b"")])
    assert len(chunks) == 2 and chunks[1] is payload  # the binary itself, not a copy per host
    assert [c["receive"] for c in json.loads(chunks[0])["calls"]] == [True, True]
    assert "reboot" not in remote_command(conn("root"))


def test_a_session_carries_the_modules_its_calls_use() -> None:
    sources = module_sources(REPO)
    (switch,) = session_input(sources, [Call(RELEASE_TASK, "rust_release", {})])
    sent = [name for name, _, _ in json.loads(switch)["modules"]]
    assert sent == [*MODULE_UTILS, "rust_release"], "a rollback does not send the environment file's module"
    (both,) = session_input(sources, [Call("env", ENV_FILE_MODULE, {}), Call(RELEASE_TASK, "rust_release", {})])
    assert [name for name, _, _ in json.loads(both)["modules"]] == [*MODULE_UTILS, "rust_release", ENV_FILE_MODULE]


def test_a_session_has_time_for_its_gates_hooks_and_transfer() -> None:
    calls = [Call("copy", "m", {}, receive=b"x" * 5_000_000),
             Call("switch", "m", {"health_timeout": 10.0, "hook_timeout": 300.0, "hooks": {"after_switch": ["true"]}})]
    # a margin, the binary at 1 MB/s, the gate twice (a failed one restores), the hook twice
    assert session_timeout(calls) == 60 + 5 + 20 + 600
    assert session_timeout([Call("cleanup", "m", {})]) == 60
