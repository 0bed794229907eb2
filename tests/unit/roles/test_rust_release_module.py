"""Filesystem and probe logic of roles/rust_service/library/rust_release.py on tmp dirs and loopback."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.project import load_file_module

MODULE_PATH = Path(__file__).resolve().parents[3] / "roles" / "rust_service" / "library" / "rust_release.py"


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    return load_file_module(MODULE_PATH, "rust_release")


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
