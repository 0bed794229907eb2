"""roles/rust_service/library/rust_release.py: filesystem, probe and hook logic on tmp dirs and
loopback, and whole module runs (check mode, refused releases, a failing before_switch hook) that
stop before anything would need systemd."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.roles.helpers import load_module_utils, load_role_module, run_role_module


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    return load_role_module("rust_release")


def _release(base: Path, rid: str, deployed_at: float | None = None) -> None:
    path = base / "releases" / rid
    path.mkdir(parents=True)
    (path / "svc").write_bytes(rid.encode())
    if deployed_at is not None:
        (path / "RELEASE").write_text(json.dumps({"id": rid, "deployed_at": deployed_at}))


def test_switch_is_a_relative_symlink_replaced_in_one_rename(mod: ModuleType, tmp_path: Path) -> None:
    _release(tmp_path, "v1-aaaaaaaaaaaa")
    _release(tmp_path, "v2-bbbbbbbbbbbb")
    assert mod.link_target(str(tmp_path), "current") is None
    mod.switch_link(str(tmp_path), "current", "v1-aaaaaaaaaaaa")
    inode_before = os.lstat(tmp_path / "current").st_ino
    mod.switch_link(str(tmp_path), "current", "v2-bbbbbbbbbbbb")
    assert os.readlink(tmp_path / "current") == "releases/v2-bbbbbbbbbbbb"
    assert (tmp_path / "current" / "svc").read_bytes() == b"v2-bbbbbbbbbbbb"
    assert os.lstat(tmp_path / "current").st_ino != inode_before, "a new link is renamed over the old one"
    assert mod.link_target(str(tmp_path), "current") == "v2-bbbbbbbbbbbb"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary link is left behind"


def test_releases_are_ordered_by_their_deploy_time(mod: ModuleType, tmp_path: Path) -> None:
    _release(tmp_path, "b-000000000002", deployed_at=200)
    _release(tmp_path, "a-000000000001", deployed_at=300)
    _release(tmp_path, "c-000000000003", deployed_at=100)
    assert mod.list_releases(str(tmp_path)) == ["c-000000000003", "b-000000000002", "a-000000000001"]
    mod.write_release_file(str(tmp_path), "c-000000000003", "1.0.0", "ff" * 32)
    assert mod.list_releases(str(tmp_path))[-1] == "c-000000000003", "a redeployed release counts as newest"
    assert mod.read_release_file(str(tmp_path), "c-000000000003")["sha256"] == "ff" * 32


def test_cleanup_never_removes_current_or_previous(mod: ModuleType) -> None:
    releases = ["r1", "r2", "r3", "r4", "r5"]
    assert mod.releases_to_remove(releases, 5, set()) == []
    assert mod.releases_to_remove(releases, 3, set()) == ["r1", "r2"]
    # previous is the oldest (a rollback target): it stays, the next oldest goes instead
    assert mod.releases_to_remove(releases, 3, {"r1", "r5"}) == ["r2", "r3"]
    assert mod.releases_to_remove(releases, 2, {"r1", "r2", "r5"}) == ["r3", "r4"]
    assert mod.releases_to_remove(releases, 0, set()) == [], "0 keeps everything"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/healthz" else 500
        body = b"ok\n" if code == 200 else b"broken\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


def test_probe_reports_status_and_body(mod: ModuleType, server: int) -> None:
    assert mod.probe_once(server, "/healthz", 2.0) == (200, "ok\n")
    assert mod.probe_once(server, "/broken", 2.0) == (500, "broken\n")


def test_probe_of_a_closed_port_says_why(mod: ModuleType, server: int) -> None:
    status, text = mod.probe_once(1, "/healthz", 1.0)
    assert status is None
    assert "refused" in text.lower() or "error" in text.lower()


def _one_answer_server(answer: bytes, *, close: bool) -> tuple[int, threading.Event, list[bytes]]:
    """A loopback server that reads one request, sends `answer` and closes the connection only
    when `close` (else it holds it open until the test ends); (port, stop, requests seen)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop, seen = threading.Event(), []

    def serve() -> None:
        conn, _ = listener.accept()
        seen.append(conn.recv(65536))
        conn.sendall(answer)
        if close:
            conn.close()
        else:
            stop.wait(10)
            conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop, seen


def test_probe_reads_to_the_content_length_without_waiting_for_the_close(mod: ModuleType) -> None:
    port, stop, seen = _one_answer_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", close=False)
    started = time.monotonic()
    try:
        assert mod.probe_once(port, "/healthz", 5.0) == (200, "ok\n")
    finally:
        stop.set()
    assert time.monotonic() - started < 2.0, "a server keeping the connection open does not hold the gate"
    assert seen[0].startswith(b"GET /healthz HTTP/1.0\r\n")


def test_probe_of_something_that_is_not_http_is_no_answer(mod: ModuleType) -> None:
    port, _, _ = _one_answer_server(b"SSH-2.0-OpenSSH_9.2\r\n", close=True)
    status, text = mod.probe_once(port, "/healthz", 2.0)
    assert status is None
    assert "not an HTTP answer" in text and "SSH-2.0" in text


def test_gate_asks_the_unit_once_the_probe_answers_200(mod: ModuleType, server: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    states = {"svc": "active", "other": "inactive"}
    monkeypatch.setattr(mod, "unit_state", lambda service: asked.append(service) or states[service])
    assert mod.wait_healthy("svc", server, "/healthz", 2.0, 0.05)[0] is True
    assert asked == ["svc"], "one systemctl call for a gate that passes at once"
    # a 200 while the unit is not active is someone else on the port: not healthy, and said so
    healthy, text = mod.wait_healthy("other", server, "/healthz", 0.3, 0.05)
    assert healthy is False
    assert text.startswith("unit other.service is inactive; GET http://127.0.0.1:")
    asked.clear()
    healthy, text = mod.wait_healthy("other", server, "/broken", 0.3, 0.05)
    assert (healthy, asked) == (False, ["other"]), "a failing probe asks the unit only when the gate ends"
    assert "-> 500" in text and "inactive" in text


@pytest.mark.parametrize("path", ["healthz", "/health z", "/healthz\r\nX-Injected: 1", "/h\u00e9alth"])
def test_probe_refuses_a_path_that_would_not_be_one_request_line(mod: ModuleType, server: int, path: str) -> None:
    status, text = mod.probe_once(server, path, 1.0)
    assert status is None
    assert "not an absolute path of printable ASCII" in text


# --- hooks -------------------------------------------------------------------------------------

HOOK_VALUES = {"port": 8080, "data_dir": "/var/lib/hello", "config_dir": "/etc/hello",
               "release_dir": "/opt/hello/releases/1.0.0-aaaaaaaaaaaa", "name": "hello"}


def test_hooks_expand_placeholders_with_the_new_release_directory(mod: ModuleType) -> None:
    hooks = {"before_switch": ["{release_dir}/migrate", "--data={data_dir}", "{{ literal }}"],
             "after_switch": ["/bin/true", 8080]}
    assert mod.hook_argvs(hooks, HOOK_VALUES) == {
        "before_switch": ["/opt/hello/releases/1.0.0-aaaaaaaaaaaa/migrate", "--data=/var/lib/hello", "{{ literal }}"],
        "after_switch": ["/bin/true", "8080"],
    }
    assert mod.hook_argvs({"before_switch": []}, HOOK_VALUES) == {}
    assert mod.hook_command("hello", ["a b", "c"]) == ["runuser", "-u", "hello", "--", "a b", "c"]


@pytest.mark.parametrize(("hooks", "message"), [
    ({"before_deploy": ["x"]}, "unknown before_deploy; valid: before_switch, after_switch"),
    ({"before_switch": ["{nope}"]}, r"hooks.before_switch\[0\]: unknown placeholder \{nope\}"),
    ({"after_switch": ["x", "a\nb"]}, r"hooks.after_switch\[1\]: control characters"),
    ({"after_switch": [""]}, "the program is empty"),
    ({"after_switch": "sh -c x"}, "expected a list"),
])
def test_bad_hooks_are_refused_naming_them(mod: ModuleType, hooks: dict[str, object], message: str) -> None:
    cmdline = load_module_utils()["rust_service_cmdline"]
    with pytest.raises(cmdline.CommandLineError, match=message):
        mod.hook_argvs(hooks, HOOK_VALUES)


def test_a_hook_runs_in_the_release_directory_with_the_service_environment(mod: ModuleType, tmp_path: Path) -> None:
    env_file = tmp_path / "hello.env"
    env_file.write_text('# managed\nHELLO_SECRET="a \\"b\\" \\$HOME"\n')
    env = mod.hook_environment(str(env_file))
    assert env["HELLO_SECRET"] == 'a "b" $HOME'
    outcome = mod.run_hook("before_switch", ["/bin/sh", "-c", 'pwd; printf "%s" "$HELLO_SECRET"'], None,
                           str(tmp_path), env, 10)
    assert (outcome["rc"], outcome["timed_out"]) == (0, False)
    assert outcome["output"] == f'{tmp_path}\na "b" $HOME'
    assert not mod.hook_failed(outcome)
    assert mod.hook_environment(str(tmp_path / "missing.env")) == {"PATH": mod.HOOK_PATH, "LANG": "C.UTF-8"}


def test_a_failing_hook_is_evidence_with_its_argv_exit_code_and_output_tail(mod: ModuleType, tmp_path: Path) -> None:
    outcome = mod.run_hook("after_switch", ["/bin/sh", "-c", "yes line | head -n 3000; echo last words; exit 3"],
                           None, str(tmp_path), {"PATH": mod.HOOK_PATH}, 10)
    assert outcome["rc"] == 3 and mod.hook_failed(outcome)
    text = mod.hook_evidence(outcome, 10)
    assert text.startswith('hook after_switch: ["/bin/sh", "-c", "yes line')
    assert "result: exit 3 after" in text
    assert text.endswith("last words\n")
    assert len(outcome["output"]) == mod.OUTPUT_TAIL


def test_a_missing_program_fails_the_hook(mod: ModuleType, tmp_path: Path) -> None:
    outcome = mod.run_hook("before_switch", ["./no-such-program"], None, str(tmp_path), {"PATH": mod.HOOK_PATH}, 10)
    assert mod.hook_failed(outcome)
    assert mod.hook_summary(outcome, 10) == "did not start"


def test_a_hook_past_its_timeout_is_killed_with_what_it_started(mod: ModuleType, tmp_path: Path) -> None:
    marker = tmp_path / "survivor"
    script = f"(sleep 3; touch {marker}) & echo started; sleep 30"
    outcome = mod.run_hook("before_switch", ["/bin/sh", "-c", script], None, str(tmp_path), {"PATH": mod.HOOK_PATH},
                           0.5)
    assert outcome["timed_out"] and outcome["rc"] is None and mod.hook_failed(outcome)
    assert outcome["seconds"] < 10
    assert mod.hook_summary(outcome, 0.5) == "timed out after 0.5s"
    assert "started" in outcome["output"]
    time.sleep(3.5)
    assert not marker.exists(), "the hook's background child was killed too"


# --- leftovers and cleanup ----------------------------------------------------------------------


def test_cleanup_removes_old_releases_their_bundles_and_leftovers(mod: ModuleType, tmp_path: Path) -> None:
    for i, rid in enumerate(["r1", "r2", "r3"]):
        _release(tmp_path, rid, deployed_at=100 + i)
        (tmp_path / "bundles" / rid).mkdir(parents=True)
    (tmp_path / "bundles" / "never-unpacked").mkdir()
    (tmp_path / "releases" / ".r4.unpack-abc").mkdir()
    mod.switch_link(str(tmp_path), "current", "r3")
    planned: dict[str, object] = {"removed": [], "changed": False}
    mod.remove_old_releases(str(tmp_path), 2, planned, check_mode=True)
    assert planned == {"removed": ["r1"], "changed": True}
    assert sorted(os.listdir(tmp_path / "releases")) == [".r4.unpack-abc", "r1", "r2", "r3"], \
        "check mode removes nothing"
    result: dict[str, object] = {"removed": [], "changed": False}
    mod.remove_old_releases(str(tmp_path), 2, result)
    assert result["removed"] == ["r1"]
    assert sorted(os.listdir(tmp_path / "releases")) == ["r2", "r3"]
    assert sorted(os.listdir(tmp_path / "bundles")) == ["r2", "r3"]


def test_files_are_written_only_when_different_and_without_leftovers(mod: ModuleType, tmp_path: Path) -> None:
    _release(tmp_path, "r1")
    path = tmp_path / "releases" / "r1" / "MANIFEST"
    assert mod.write_if_different(str(tmp_path), str(path), "text\n") is True
    assert mod.write_if_different(str(tmp_path), str(path), "text\n") is False
    assert path.read_text() == "text\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["releases"]


# --- whole module runs -----------------------------------------------------------------------------

RID1, RID2 = "1.0.0-aaaaaaaaaaaa", "2.0.0-bbbbbbbbbbbb"


def _signed(tmp_path: Path, keypair: tuple[Path, str], rid: str, files: dict[str, bytes]) -> tuple[str, str]:
    """(manifest, signature) for `files` of release `rid`, signed with the test key."""
    bundle = load_module_utils()["rust_service_bundle"]
    text = bundle.manifest_text({name: hashlib.sha256(data).hexdigest() for name, data in files.items()}, rid, "1")
    message = tmp_path / f"{rid}.manifest"
    message.write_text(text)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(keypair[0]), "-n", "orchestrate-release",
                    str(message)], check=True)
    return text, (tmp_path / f"{rid}.manifest.sig").read_text()


@pytest.fixture
def signing(tmp_path: Path) -> tuple[Path, str, str]:
    """(private key, public key line, allowed signers file)."""
    key = tmp_path / "keys" / "release"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = (key.parent / "release.pub").read_text().strip()
    signers = tmp_path / "keys" / "signers"
    signers.write_text(load_module_utils()["rust_service_bundle"].allowed_signers([public]))
    return key, public, str(signers)


def _tree(root: Path) -> dict[str, bytes | str]:
    """Everything under root: file contents and link targets (to compare before and after)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return found


def _bundle_file(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def test_check_mode_reports_the_switch_and_its_hooks_and_changes_nothing(tmp_path: Path,
                                                                         signing: tuple[Path, str, str]) -> None:
    base = tmp_path / "opt"
    _release(base, RID1)
    base.joinpath("current").symlink_to(f"releases/{RID1}")
    files = {"svc": b"two", "static/a.txt": b"a"}
    archive = _bundle_file(tmp_path / "b.tar.gz", files)
    manifest, signature = _signed(tmp_path, signing, RID2, files)
    before = _tree(base)
    result = run_role_module("rust_release", {
        "state": "present", "service": "svc", "base_dir": str(base), "release_id": RID2,
        "sha256": hashlib.sha256(b"two").hexdigest(), "archive": str(archive), "manifest": manifest,
        "signature": signature, "allowed_signers": signing[2],
        "hooks": {"before_switch": ["/bin/false"], "after_switch": ["/bin/false"]}, "user": "nobody",
    }, tmp_path, check_mode=True)
    assert result.get("failed") is not True, result
    assert (result["changed"], result["release_before"], result["release"]) == (True, RID1, RID2)
    assert result["would_run_hooks"] == ["before_switch", "after_switch"]
    assert result["hooks_run"] == [] and result["switched"] is False
    assert _tree(base) == before, "check mode changed the host"


def test_check_mode_of_the_current_release_runs_no_hook(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    _release(base, RID1)
    base.joinpath("current").symlink_to(f"releases/{RID1}")
    result = run_role_module("rust_release", {
        "state": "present", "service": "svc", "base_dir": str(base), "release_id": RID1,
        "sha256": hashlib.sha256(RID1.encode()).hexdigest(), "hooks": {"before_switch": ["/bin/false"]},
    }, tmp_path, check_mode=True)
    # the unit is not active on this machine: a real run would restart it in place, without hooks
    assert (result["changed"], result["release"], result["would_run_hooks"]) == (True, RID1, [])
    assert result["verified"] == "sha256"


def test_a_bad_bundle_is_refused_and_nothing_is_unpacked(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    _release(base, RID1)
    base.joinpath("current").symlink_to(f"releases/{RID1}")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("svc")
        info.type, info.linkname = tarfile.SYMTYPE, "/bin/sh"
        tar.addfile(info)
    result = run_role_module("rust_release", {
        "state": "present", "service": "svc", "base_dir": str(base), "release_id": RID2, "sha256": "0" * 64,
        "archive": str(archive),
    }, tmp_path)
    assert result["failed"] is True
    assert f"release {RID2} refused: bundle member 'svc' is a symlink" in str(result["msg"])
    assert f"{RID1} keeps serving" in str(result["msg"])
    assert "is a symlink" in result["evidence"]["integrity"]  # type: ignore[index]
    assert sorted(os.listdir(base / "releases")) == [RID1]
    assert os.readlink(base / "current") == f"releases/{RID1}"


def test_a_rollback_to_a_tampered_signed_release_is_refused_naming_the_file(tmp_path: Path,
                                                                            signing: tuple[Path, str, str]) -> None:
    base = tmp_path / "opt"
    files = {"svc": b"one", "static/a.txt": b"a"}
    manifest, signature = _signed(tmp_path, signing, RID1, files)
    for rid in (RID1, RID2):
        (base / "releases" / rid / "static").mkdir(parents=True)
    for name, data in files.items():
        (base / "releases" / RID1 / name).write_bytes(data)
    (base / "releases" / RID1 / "MANIFEST").write_text(manifest)
    (base / "releases" / RID1 / "MANIFEST.sig").write_text(signature)
    (base / "releases" / RID2 / "svc").write_bytes(b"two")
    base.joinpath("current").symlink_to(f"releases/{RID2}")
    base.joinpath("previous").symlink_to(f"releases/{RID1}")
    args = {"state": "rollback", "service": "svc", "base_dir": str(base), "allowed_signers": signing[2]}
    (base / "releases" / RID1 / "static" / "a.txt").write_bytes(b"tampered")
    result = run_role_module("rust_release", args, tmp_path)
    assert result["failed"] is True
    assert str(result["msg"]).startswith(f"release {RID1} refused: static/a.txt: sha256 ")
    assert "static/a.txt" in result["evidence"]["integrity"]  # type: ignore[index]
    assert (result["release"], result["switched"], result["rolled_back"]) == (RID2, False, False)
    assert os.readlink(base / "current") == f"releases/{RID2}", "the host keeps serving its release"

    (base / "releases" / RID1 / "static" / "a.txt").write_bytes(b"a")
    (base / "releases" / RID1 / "static" / "extra.txt").write_bytes(b"x")
    extra = run_role_module("rust_release", args, tmp_path, check_mode=True)
    assert "static/extra.txt is not listed in the manifest" in str(extra["msg"])


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser needs root")
def test_a_failing_before_switch_hook_switches_nothing(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    _release(base, RID1)
    _release(base, RID2)
    base.joinpath("current").symlink_to(f"releases/{RID1}")
    os.chmod(tmp_path, 0o755)
    result = run_role_module("rust_release", {
        "state": "present", "service": "svc", "base_dir": str(base), "release_id": RID2,
        "sha256": hashlib.sha256(RID2.encode()).hexdigest(), "user": "nobody",
        "hooks": {"before_switch": ["/bin/sh", "-c", "id -un; pwd; echo {name} {port}; exit 4"]},
    }, tmp_path)
    assert result["failed"] is True
    assert str(result["msg"]).startswith(
        f"release {RID2}: its before_switch hook failed (exit 4); {RID1} keeps serving")
    assert (result["release"], result["rolled_back"], result["switched"]) == (RID1, True, False)
    assert result["hooks_run"] == ["before_switch"]
    hook = str(result["evidence"]["hook"])  # type: ignore[index]
    assert "result: exit 4" in hook
    assert hook.endswith(f"nobody\n{base}/releases/{RID2}\nsvc 8080\n"), hook
    assert os.readlink(base / "current") == f"releases/{RID1}"
    assert not (base / "releases" / RID2 / "RELEASE").exists(), "a release that never served is not recorded"


def test_a_binary_whose_sha256_differs_is_refused_before_the_switch(tmp_path: Path) -> None:
    base = tmp_path / "opt"
    _release(base, RID1)
    _release(base, RID2)
    base.joinpath("current").symlink_to(f"releases/{RID1}")
    result = run_role_module("rust_release", {
        "state": "present", "service": "svc", "base_dir": str(base), "release_id": RID2, "sha256": "ab" * 32,
    }, tmp_path)
    assert result["failed"] is True
    # the wording the controller's tests look for
    assert f"releases/{RID2}/svc: sha256 " in str(result["msg"])
    assert "does not match the release's " + "ab" * 32 in str(result["msg"])
    assert (result["release"], result["switched"], result["rolled_back"]) == (RID1, False, False)
    assert os.readlink(base / "current") == f"releases/{RID1}"
