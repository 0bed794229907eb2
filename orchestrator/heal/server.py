"""The self-healing loop: Alertmanager's webhook -> remediation policy -> remediation playbooks.

`HealServer` receives Alertmanager webhook notifications (bearer token, loopback or the project's
bridge only) and queues their alerts; one worker thread decides and acts on them in order:

    received -> HealPolicy.decide -> (act | throttled | circuit-open | ignored)
             -> environment lock (wait or skip) -> remediation -> result

`HealPolicy` is pure and clock-free (the caller passes `now`): the `remediation` label picks the
action (restart the unit on the alert's host, roll the environment back, or none); a throttle per
(host, alertname) stops repeats; a circuit breaker allows at most `max_remediations` actions per
`window` and then records one escalation and stops acting until the window has room again.
Every decision and result goes to the environment's audit log.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from orchestrator.config.schema import Environment, parse_duration
from orchestrator.errors import LockBusy, OrchestratorError, UsageError
from orchestrator.heal.policy import Alert, HealError, HealPolicy, Verdict, WebhookError, parse_webhook
from orchestrator.monitoring.files import bridge_gateway

#: largest webhook body accepted (Alertmanager sends a few KB per group)
MAX_BODY_BYTES = 1 << 20


#: alerts waiting for the worker before the server answers 503 (Alertmanager then retries)
MAX_QUEUED = 10_000


#: the audit log's command for every heal entry
AUDIT_COMMAND = "heal"


#: refused requests (wrong or missing token) are audited at most once per client per this many seconds
REFUSED_AUDIT_INTERVAL = 60.0


@dataclass(frozen=True)
class RemediationResult:
    """How a remediation ended."""

    ok: bool
    detail: str = ""
    duration: float = 0.0


class Remediator(Protocol):
    """Carries out one remediation (restart the unit on a host, roll back the environment)."""

    def remediate(self, action: str, alert: Alert, session: object = None) -> RemediationResult:
        """Act inside `session` (what the lock's `hold` yielded)."""
        ...


class AuditSink(Protocol):
    """Where decisions are recorded (orchestrator.runs.audit.AuditLog fits)."""

    def record(self, *, command: str, outcome: str, duration: float | None = None,
               details: Mapping[str, Any] | None = None) -> object: ...


class EnvironmentLock(Protocol):
    """The environment lock deploys hold; the heal server must not act while it is held."""

    def hold(self, wait: float, *, command: str = "remediate") -> contextlib.AbstractContextManager[object]:
        """Hold the lock for the block (a run doing `command`), waiting up to `wait` seconds; LockBusy
        when it stays taken. Yields the session the remediation acts in."""
        ...


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port); UsageError when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT such as 127.0.0.1:9095")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--listen {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def check_bind_address(env: Environment, host: str) -> None:
    """Refuse (UsageError, exit 2) any address but loopback and the project's own bridge gateway."""
    ip = ipaddress.ip_address(host)
    if ip.is_loopback:
        return
    gateway = bridge_gateway(env)
    if gateway is not None and host == gateway:
        return
    allowed = "loopback (127.0.0.0/8, ::1)" + (f" or the bridge address {gateway}" if gateway else "")
    raise UsageError(f"refusing to listen on {host}: the heal server binds only to {allowed}")


def default_listeners(env: Environment, listen: str | None = None) -> list[tuple[str, int]]:
    """Addresses to serve on: `listen` (or healing.listen), then the bridge gateway on a local fleet.

    Alertmanager on a local fleet's monitoring host reaches the controller only through the bridge,
    so without an explicit --listen the server also listens there; `build_server` drops that second
    address while the bridge does not exist.
    """
    host, port = parse_listen(listen or env.healing.listen)
    check_bind_address(env, host)
    listeners = [(host, port)]
    gateway = bridge_gateway(env)
    if listen is None and gateway is not None and gateway != host:
        listeners.append((gateway, port))
    return listeners


@dataclass
class _Queued:
    alert: Alert
    received: float
    group_key: str


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    # A client that stops sending must not hold a handler thread forever.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        # The audit log records what matters; per-request lines would only repeat it.
        return

    def _reply(self, status: HTTPStatus, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        expected = self.server.heal.token
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), expected.encode())

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body must be at most {MAX_BODY_BYTES} bytes"})
            return None
        return self.rfile.read(length)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(HTTPStatus.OK, {"status": "ok"})
        elif self.path == "/status":
            if not self._authorized():
                self._reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"},
                            {"WWW-Authenticate": 'Bearer realm="orchestrate-heal"'})
                return
            self._reply(HTTPStatus.OK, self.server.heal.summary())
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/alerts":
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not found; Alertmanager posts to /alerts"})
            return
        authorized = self._authorized()
        body = self._read_body()
        if body is None:
            return
        if not authorized:
            self.server.heal.refuse(self.client_address[0], self.path)
            self._reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"},
                        {"WWW-Authenticate": 'Bearer realm="orchestrate-heal"'})
            return
        try:
            payload = json.loads(body)
            alerts = parse_webhook(payload)
        except (ValueError, WebhookError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        accepted = self.server.heal.submit(alerts, str(payload.get("groupKey", "")))
        if not accepted:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many queued alerts; retry later"})
            return
        self._reply(HTTPStatus.OK, {"accepted": len(alerts)})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], heal: HealServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.heal = heal
        super().__init__(address, _Handler)


@dataclass(frozen=True)
class HealSettings:
    """How the server treats the environment lock."""

    on_lock: str = "wait"
    lock_wait: float = 120.0

    @classmethod
    def from_env(cls, env: Environment) -> HealSettings:
        return cls(on_lock=env.healing.on_lock, lock_wait=parse_duration(env.healing.lock_wait))


class HealServer:
    """The webhook receiver and its decision worker. `start()`, then `stop()` (or use `with`)."""

    def __init__(
        self,
        *,
        policy: HealPolicy,
        remediator: Remediator,
        audit: AuditSink,
        lock: EnvironmentLock,
        token: str,
        listeners: Sequence[tuple[str, int]],
        optional_listeners: Sequence[tuple[str, int]] = (),
        settings: HealSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float = 5.0,
    ) -> None:
        if not token:
            raise HealError("the heal server needs a non-empty bearer token")
        self.policy = policy
        self.remediator = remediator
        self.audit = audit
        self.lock = lock
        self.token = token
        self.settings = settings or HealSettings()
        self.clock = clock
        self._listeners = list(listeners)
        # Addresses that may not exist yet (the bridge of a fleet not created yet): bound when they
        # appear, retried every `retry_interval` seconds.
        self._optional = list(optional_listeners)
        self._retry_interval = retry_interval
        self._stopping = threading.Event()
        self._servers_lock = threading.Lock()
        self._servers: list[_HTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue[_Queued | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._stats_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._decisions: list[dict[str, Any]] = []
        self._pending = 0
        self._idle = threading.Condition(self._stats_lock)
        # When each (host, alertname) was last reported resolved, as notifications arrive: an action
        # that waited for the lock is dropped when its alert resolved in the meantime.
        self._resolved_at: dict[tuple[str, str], float] = {}
        # client address -> (when its last refusal was audited, refusals not audited since)
        self._refused: dict[str, tuple[float | None, int]] = {}

    # lifecycle

    def start(self) -> list[tuple[str, int]]:
        """Bind every listener and start serving; return the bound (host, port) pairs."""
        try:
            for address in self._listeners:
                self._servers.append(_HTTPServer(address, self))
        except OSError as exc:
            self._close_servers()
            raise HealError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        for server in self._servers:
            self._serve(server)
        self._bind_optional()
        worker = threading.Thread(target=self._work, name="heal-worker", daemon=True)
        worker.start()
        self._threads.append(worker)
        if self._optional:
            retry = threading.Thread(target=self._retry_optional, name="heal-bind", daemon=True)
            retry.start()
            self._threads.append(retry)
        return self.addresses

    def _serve(self, server: _HTTPServer) -> None:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name=f"heal-http-{server.server_address[1]}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _bind_optional(self) -> None:
        for address in list(self._optional):
            try:
                server = _HTTPServer(address, self)
            except OSError:
                continue
            with self._servers_lock:
                if self._stopping.is_set():
                    server.server_close()
                    return
                self._servers.append(server)
                self._optional.remove(address)
            self._serve(server)

    def _retry_optional(self) -> None:
        while self._optional and not self._stopping.wait(self._retry_interval):
            self._bind_optional()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs served now."""
        with self._servers_lock:
            return [(str(s.server_address[0]), int(s.server_address[1])) for s in self._servers]

    @property
    def waiting_addresses(self) -> list[tuple[str, int]]:
        """Optional addresses not bound yet (their interface does not exist)."""
        return list(self._optional)

    def stop(self) -> None:
        """Stop accepting requests, finish the queued alerts, and stop the worker."""
        self._stopping.set()
        with self._servers_lock:
            servers = list(self._servers)
        for server in servers:
            server.shutdown()
        self._close_servers()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def _close_servers(self) -> None:
        with self._servers_lock:
            for server in self._servers:
                server.server_close()
            self._servers.clear()

    def __enter__(self) -> HealServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # requests

    def submit(self, alerts: Sequence[Alert], group_key: str = "") -> bool:
        """Queue `alerts` for the worker; False when the queue is full."""
        now = self.clock()
        with self._stats_lock:
            if self._queue.qsize() + len(alerts) > MAX_QUEUED:
                return False
            self._pending += len(alerts)
            for alert in alerts:
                if not alert.firing:
                    self._resolved_at[(alert.host, alert.name)] = now
        for alert in alerts:
            self._queue.put(_Queued(alert, now, group_key))
        return True

    def count(self, what: str) -> None:
        with self._stats_lock:
            self._counts[what] = self._counts.get(what, 0) + 1

    def refuse(self, client: str, path: str) -> None:
        """Count a request without the right token and audit it: once per client per interval.

        A client that keeps trying (a misconfigured Alertmanager, or someone probing) would
        otherwise fill the append-only log; the next entry says how many were not recorded.
        """
        now = self.clock()
        with self._stats_lock:
            self._counts["unauthorized"] = self._counts.get("unauthorized", 0) + 1
            last, suppressed = self._refused.get(client, (None, 0))
            if last is not None and now - last < REFUSED_AUDIT_INTERVAL:
                self._refused[client] = (last, suppressed + 1)
                return
            if len(self._refused) >= 1024:  # many clients: forget the ones whose interval is over
                self._refused = {c: v for c, v in self._refused.items()
                                 if v[0] is not None and now - v[0] < REFUSED_AUDIT_INTERVAL}
            self._refused[client] = (now, 0)
        try:
            self.audit.record(command=AUDIT_COMMAND, outcome="unauthorized",
                              details={"client": client, "path": path, "not_recorded_before": suppressed,
                                       "reason": "missing or wrong bearer token"})
        except OrchestratorError:
            self.count("audit-error")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued alert has been handled; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def summary(self) -> dict[str, Any]:
        """Counts per event and the decisions so far (newest last)."""
        with self._stats_lock:
            return {"counts": dict(self._counts), "decisions": list(self._decisions),
                    "actions_in_window": self.policy.actions_in_window(self.clock())}

    # the worker

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._handle(item)
            except Exception as exc:  # one bad alert must not stop the loop; the audit log says why
                self._record("error", item.alert, {"error": f"{type(exc).__name__}: {exc}"})
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _record(self, outcome: str, alert: Alert, details: Mapping[str, Any] | None = None,
                duration: float | None = None) -> None:
        with self._stats_lock:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1
        try:
            self.audit.record(command=AUDIT_COMMAND, outcome=outcome, duration=duration,
                              details={**alert.as_dict(), **(details or {})})
        except OrchestratorError:
            # An audit write that fails (disk full, locked too long) must not stop the healing;
            # the count above still shows the event in /status.
            self.count("audit-error")

    def _handle(self, item: _Queued) -> None:
        alert = item.alert
        self._record("received", alert, {"group_key": item.group_key})
        decision = self.policy.decide(alert, self.clock())
        with self._stats_lock:
            self._decisions.append(decision.as_dict())
        details = {"decision": decision.id, "reason": decision.reason, "action": decision.action}
        if decision.verdict is not Verdict.ACT:
            self._record(str(decision.verdict), alert, details)
            if decision.escalate:
                self._record("escalated", alert, {**details, "escalation": "circuit breaker open: "
                                                  "remediation stopped, an operator must look"})
            return
        wait = self.settings.lock_wait if self.settings.on_lock == "wait" else 0.0
        try:
            with self.lock.hold(wait, command=decision.action or "remediate") as session:
                with self._stats_lock:
                    resolved_at = self._resolved_at.get((alert.host, alert.name))
                if resolved_at is not None and resolved_at > item.received:
                    self.policy.release(decision)
                    self._record("resolved-while-waiting", alert, details)
                    return
                self._record("acted", alert, details)
                started = time.monotonic()
                try:
                    result = self.remediator.remediate(decision.action or "", alert, session)
                except OrchestratorError as exc:
                    result = RemediationResult(ok=False, detail=exc.message)
                duration = result.duration or (time.monotonic() - started)
                self.policy.finish(decision, self.clock())
                self._record("succeeded" if result.ok else "failed", alert,
                             {**details, "detail": result.detail}, duration=duration)
        except LockBusy as exc:
            self.policy.release(decision)
            self._record("skipped-locked", alert, {**details, "lock": exc.message,
                                                   "on_lock": self.settings.on_lock})
