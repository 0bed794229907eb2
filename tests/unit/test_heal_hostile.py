"""The heal server under abuse, over real sockets: slow and unauthenticated clients, floods,
failing audit logs and remediations, stuck or dead workers, labels that lie, stale alerts."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.heal.policy import Alert
from orchestrator.heal.server import MAX_DECISIONS, HealServer, HealSettings, RemediationResult
from orchestrator.models.heal import Present
from orchestrator.runs.audit import AuditLog
from tests.unit.test_heal import (
    TOKEN,
    CountingRemediator,
    FreeLock,
    MemoryAudit,
    alert,
    free_port,
    policy,
    post,
    webhook,
)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def serving(remediator: Any = None, audit: Any = None, *, settings: HealSettings | None = None,
            present: Any = None, max_remediations: int = 50) -> Iterator[tuple[HealServer, str]]:
    server = HealServer(policy=policy(throttle=0.01, max_remediations=max_remediations),
                        remediator=remediator or CountingRemediator(), audit=audit or MemoryAudit(),
                        lock=FreeLock(), token=TOKEN, listeners=[("127.0.0.1", 0)], settings=settings,
                        present=present)
    host, port = server.start()[0]
    try:
        yield server, f"http://{host}:{port}"
    finally:
        server.stop()


def healthz(base: str) -> tuple[int, dict[str, Any]]:
    try:
        with _OPENER.open(f"{base}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def slow_client(port: int, first: bytes = b"POST /alerts HTTP/1.1\r\nHost: heal\r\n") -> socket.socket:
    """A connection that sent the start of a request and then goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(first)
    return sock


def closed_within(sock: socket.socket, seconds: float, *, dribble: float | None = None) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds` (sending a byte every `dribble` s meanwhile)."""
    deadline = time.monotonic() + seconds
    answer = b""
    sock.settimeout(dribble or 0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            if dribble is not None:
                try:
                    sock.sendall(b"X")
                except OSError:
                    return True, answer
            continue
        except OSError:
            return True, answer
        if not data:
            return True, answer
        answer += data
    return False, answer


# --- the HTTP side ------------------------------------------------------------------------------


def test_300_slow_unauthenticated_connections_leave_few_threads_and_alerts_answered(project_copy: Path) -> None:
    """The real `orchestrate heal serve`: its threads counted in /proc while 300 clients hang."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "--project-dir", str(project_copy), "heal", "serve",
                             "dev", "--listen", f"127.0.0.1:{port}", "--once-for", "40", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        token_file = project_copy / ".orchestrate" / "dev" / "heal.token"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                if healthz(f"http://127.0.0.1:{port}")[0] == 200 and token_file.exists():
                    break
            time.sleep(0.1)
        for _ in range(300):
            clients.append(slow_client(port, b"POST /alerts HTTP/1.1\r\nAuthorization: Bearer wr"))
        time.sleep(1.0)
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        started = time.monotonic()
        code, body = post(f"http://127.0.0.1:{port}/alerts", webhook(alert("HostUnreachable")),
                          token=token_file.read_text().strip())
        answered = time.monotonic() - started
        assert (code, body) == (200, {"accepted": 1})
        assert answered < 2.0, f"took {answered:.2f} s"
        assert threads < 64, f"{threads} threads for 300 slow connections"
        # and the slow ones are cut off by the whole-request deadline, not held for minutes
        assert all(closed_within(c, 8)[0] for c in clients[:20])
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_token_is_checked_before_the_body_is_read() -> None:
    with serving() as (server, base):
        port = int(base.rsplit(":", 1)[1])
        sock = slow_client(port, b"POST /alerts HTTP/1.1\r\nAuthorization: Bearer wrong\r\n"
                                 b"Content-Length: 100000\r\n\r\n")  # and no body follows
        started = time.monotonic()
        closed, answer = closed_within(sock, 3)
        sock.close()
        assert closed and answer.startswith(b"HTTP/1.1 401 ")
        assert time.monotonic() - started < 1.5
        assert server.summary()["counts"]["unauthorized"] == 1


def test_a_client_dribbling_bytes_is_cut_off_by_the_whole_request_deadline() -> None:
    """A byte every 0.5 s (every 12 s in the report) keeps a per-read timeout happy forever."""
    with serving(settings=HealSettings(request_deadline=2.0)) as (_, base):
        sock = slow_client(int(base.rsplit(":", 1)[1]))
        started = time.monotonic()
        closed, answer = closed_within(sock, 6, dribble=0.5)
        sock.close()
    assert closed, "the connection was still open after 6 s"
    assert 1.5 < time.monotonic() - started < 4
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_connections_beyond_the_limit_get_503_at_once() -> None:
    with serving(settings=HealSettings(max_connections=5)) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        held = [slow_client(port) for _ in range(5)]
        time.sleep(0.3)
        started = time.monotonic()
        extra = slow_client(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        closed, answer = closed_within(extra, 2)
        assert closed and answer.startswith(b"HTTP/1.1 503 ") and time.monotonic() - started < 1
        for sock in [*held, extra]:
            sock.close()
        time.sleep(0.3)
        assert healthz(base)[0] == 200  # room again


def test_malformed_and_oversized_requests_are_refused() -> None:
    with serving() as (_, base):
        port = int(base.rsplit(":", 1)[1])
        for request, status in ((b"NONSENSE\r\n\r\n", b"400"), (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000, b"431"),
                                (b"GET /alerts HTTP/1.1\r\n\r\n", b"405"),
                                (f"POST /alerts HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                 "Content-Length: 99999999\r\n\r\n".encode(), b"413")):
            sock = slow_client(port, request)
            closed, answer = closed_within(sock, 3)
            sock.close()
            assert closed and answer.startswith(b"HTTP/1.1 " + status), (request[:40], answer[:60])


def test_the_decision_history_is_bounded() -> None:
    with serving() as (server, base):
        for i in range(3):
            assert post(f"{base}/alerts", webhook(*(alert(host=f"h{i}-{j}") for j in range(100))))[0] == 200
        assert server.wait_idle(60)
        summary = server.summary()
    assert summary["counts"]["received"] == 300
    assert len(summary["decisions"]) == MAX_DECISIONS
    assert summary["decisions"][-1]["host"] == "h2-99"


# --- the worker -------------------------------------------------------------------------------


@dataclass
class FlakyRemediator:
    """Raises an unexpected error for the hosts in `broken`, remediates the others."""

    broken: set[str]
    calls: list[str] = field(default_factory=list)

    def remediate(self, action: str, alert: Alert, session: object = None) -> RemediationResult:
        self.calls.append(alert.host)
        if alert.host in self.broken:
            raise RuntimeError("playbook runner crashed")
        return RemediationResult(ok=True)


def test_the_worker_survives_a_remediation_that_raises() -> None:
    remediator = FlakyRemediator(broken={"h1"})
    audit = MemoryAudit()
    with serving(remediator, audit) as (server, base):
        post(f"{base}/alerts", webhook(alert(host="h1")))
        post(f"{base}/alerts", webhook(alert(host="h2")))
        assert server.wait_idle(10)
        assert healthz(base)[0] == 200
    assert remediator.calls == ["h1", "h2"]
    failed = [e for e in audit.entries if e["outcome"] == "failed"]
    assert len(failed) == 1 and "RuntimeError: playbook runner crashed" in failed[0]["details"]["detail"]
    assert audit.outcomes().count("succeeded") == 1


def test_a_locked_audit_database_does_not_stop_the_next_remediation(tmp_path: Path) -> None:
    remediator = CountingRemediator()
    audit = AuditLog(tmp_path, env="dev", timeout=0.2)
    blocker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    with serving(remediator, audit) as (server, base):
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the audit database
        post(f"{base}/alerts", webhook(alert(host="h1")))
        assert server.wait_idle(20)
        blocker.execute("ROLLBACK")
        post(f"{base}/alerts", webhook(alert(host="h2")))
        assert server.wait_idle(20)
        assert healthz(base)[0] == 200
        counts = server.summary()["counts"]
    blocker.close()
    assert [call[1] for call in remediator.calls] == ["h1", "h2"]
    assert counts["audit-error"] >= 3 and counts["succeeded"] == 2
    outcomes = [(e.outcome, e.details.get("host")) for e in reversed(audit.entries(command="heal"))]
    assert outcomes == [("received", "h2"), ("acted", "h2"), ("succeeded", "h2")]
    audit.close()


class Gate:
    """A remediation that waits until released (a hung playbook)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def remediate(self, action: str, alert: Alert, session: object = None) -> RemediationResult:
        self.release.wait(30)
        return RemediationResult(ok=True)


def test_healthz_reports_a_stuck_worker() -> None:
    gate = Gate()
    with serving(gate, settings=HealSettings(stuck_after=0.5)) as (server, base):
        assert healthz(base)[0] == 200
        post(f"{base}/alerts", webhook(alert()))
        time.sleep(1.2)
        code, body = healthz(base)
        assert code == 503 and "on one alert" in body["reason"]
        gate.release.set()
        assert server.wait_idle(10)
        assert healthz(base)[0] == 200


class Fatal:
    def remediate(self, action: str, alert: Alert, session: object = None) -> RemediationResult:
        raise SystemExit("the worker thread ends")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_healthz_reports_a_dead_worker() -> None:
    with serving(Fatal()) as (server, base):
        post(f"{base}/alerts", webhook(alert()))
        deadline = time.monotonic() + 10
        while server._worker is not None and server._worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        code, body = healthz(base)
    assert code == 503 and body["reason"] == "the decision worker is not running"


# --- what decides the action --------------------------------------------------------------------


def test_a_remediation_label_that_disagrees_with_the_policy_is_ignored_and_audited() -> None:
    remediator = CountingRemediator()
    audit = MemoryAudit()
    with serving(remediator, audit) as (server, base):
        post(f"{base}/alerts", webhook(alert("HostUnreachable", remediation="rollback"),
                                       alert("HighErrorRate", host="h2", remediation="restart")))
        assert server.wait_idle(10)
    assert remediator.calls == [("rollback", "h2", "HighErrorRate")]
    ignored = [(e["details"]["alertname"], e["details"]["label"], e["details"]["policy"])
               for e in audit.entries if e["outcome"] == "label-ignored"]
    assert ignored == [("HostUnreachable", "rollback", "none"), ("HighErrorRate", "restart", "rollback")]


@dataclass
class FixedPresent:
    """A PresentCheck answering what it is given (the journal-backed one has tests of its own)."""

    present: Present | None = None
    error: Exception | None = None
    marks: list[str] = field(default_factory=list)

    def mark(self, alert: Alert) -> object:
        self.marks.append(alert.host)
        return 7

    def facts(self, alert: Alert, action: str, mark: object, session: object) -> Present:
        assert mark == 7
        if self.error is not None:
            raise self.error
        assert self.present is not None
        return Present(**{**self.present.__dict__, "action": action})


@pytest.mark.parametrize(("present", "drop"), [
    (FixedPresent(Present("", firing=False, host_moved=False, window_covers_move=False)), "resolved"),
    (FixedPresent(Present("", firing=True, host_moved=True, window_covers_move=False)), "host-moved"),
    (FixedPresent(Present("", firing=True, host_moved=False, window_covers_move=True)), "window-covers-move"),
    (FixedPresent(error=sqlite3.OperationalError("database is locked")), "unconfirmed"),
])
def test_stale_alerts_are_dropped_after_the_lock_and_audited(present: FixedPresent, drop: str) -> None:
    remediator = CountingRemediator()
    audit = MemoryAudit()
    with serving(remediator, audit, present=present, max_remediations=1) as (server, base):
        post(f"{base}/alerts", webhook(alert()))
        assert server.wait_idle(10)
        assert server.policy.actions_in_window(server.clock()) == 0  # the slot was given back
    assert remediator.calls == [] and present.marks == ["dev-app-1"]
    assert audit.outcomes() == ["received", "dropped"]
    assert audit.entries[1]["details"]["drop"] == drop and audit.entries[1]["details"]["why"]


def test_a_present_alert_is_remediated() -> None:
    remediator = CountingRemediator()
    present = FixedPresent(Present("", firing=True, host_moved=False, window_covers_move=False))
    with serving(remediator, present=present) as (server, base):
        post(f"{base}/alerts", webhook(alert()))
        assert server.wait_idle(10)
    assert remediator.calls == [("restart", "dev-app-1", "ServiceDown")]
