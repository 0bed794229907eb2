"""The self-healing loop: Alertmanager's webhook -> remediation policy -> remediation playbooks.

`HealServer` receives Alertmanager webhook notifications (bearer token, loopback or the project's
bridge only; orchestrator.heal.http serves them from one event loop thread, bounded and with a
deadline per request) and queues their alerts; one worker thread decides and acts on them in order:

    received -> HealPolicy.decide -> (act | throttled | circuit-open | ignored)
             -> environment lock (wait or skip) -> the present re-checked -> remediation -> result
                                                                    `-> dropped (why)

`HealPolicy` is pure and clock-free (the caller passes `now`): the policy's rule for the alert's
name picks the action (restart the unit on the alert's host, roll the environment back, or none);
a throttle per (host, alertname) stops repeats; a circuit breaker allows at most
`max_remediations` actions per `window` and then records one escalation and stops acting until
the window has room again. After waiting for the lock the worker decides on the present
(orchestrator.models.heal.judge: the alert still fires, its host was not moved since or within
the alert's window, a rollback does not go past its floor) and drops what is stale.

Every decision and result goes to the environment's audit log. The worker survives any error
(logged, and audited when the audit log can be written); `/healthz` answers 503 when it is dead
or has been on one alert longer than any remediation can take.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from orchestrator.config.schema import Environment
from orchestrator.config.types import parse_duration
from orchestrator.errors import LockBusy, OrchestratorError, UsageError
from orchestrator.heal.http import MAX_CONNECTIONS, REQUEST_DEADLINE, HttpFront, Reply
from orchestrator.heal.policy import Alert, Decision, HealError, HealPolicy, Verdict, WebhookError, parse_webhook
from orchestrator.models.heal import Present, judge
from orchestrator.monitoring.files import bridge_gateway

#: alerts waiting for the worker before the server answers 503 (Alertmanager then retries)
MAX_QUEUED = 10_000


#: decisions kept for /status (newest); the audit log keeps all of them
MAX_DECISIONS = 200


#: (host, alert) resolution times and refused clients remembered at most
MAX_TRACKED = 4096


#: after the worker let the lock go, it waits this long before taking it for the next alert, so
#: that an operator's command waiting for the lock (polling every 0.1 s) is not starved by a
#: burst of stale alerts
LOCK_YIELD = 0.3


#: how long one remediation may take at most (a rollback: a status run, the rollback and maybe a
#: restore, each bounded by the playbook timeout): beyond it plus the lock wait, the worker is stuck
REMEDIATION_BUDGET = 3 * 1800.0


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


class PresentCheck(Protocol):
    """What the worker reads to decide on the present (orchestrator.heal.present.JournalPresent)."""

    def mark(self, alert: Alert) -> object:
        """What is known of the alert's host when the alert arrives (compared after the lock)."""
        ...

    def facts(self, alert: Alert, action: str, mark: object, session: object) -> Present:
        """What is true now, inside the lock's `session`, for `judge`."""
        ...


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
    mark: object = None


@dataclass(frozen=True)
class HealSettings:
    """How the server treats the environment lock, its clients and its worker."""

    on_lock: str = "wait"
    lock_wait: float = 120.0
    request_deadline: float = REQUEST_DEADLINE
    max_connections: int = MAX_CONNECTIONS
    stuck_after: float | None = None
    """Seconds on one alert after which /healthz calls the worker stuck (None: lock_wait plus
    REMEDIATION_BUDGET)."""

    @classmethod
    def from_env(cls, env: Environment) -> HealSettings:
        return cls(on_lock=env.healing.on_lock, lock_wait=parse_duration(env.healing.lock_wait))

    @property
    def stuck_seconds(self) -> float:
        return self.stuck_after if self.stuck_after is not None else self.lock_wait + REMEDIATION_BUDGET


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
        present: PresentCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float = 5.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not token:
            raise HealError("the heal server needs a non-empty bearer token")
        self.policy = policy
        self.remediator = remediator
        self.audit = audit
        self.lock = lock
        self.token = token
        self.settings = settings or HealSettings()
        self.present = present
        self.clock = clock
        self._log = log or (lambda message: None)
        self._listeners = list(listeners)
        # Addresses that may not exist yet (the bridge of a fleet not created yet): bound when they
        # appear, retried every `retry_interval` seconds.
        self._optional = list(optional_listeners)
        self._retry_interval = retry_interval
        self._stopping = threading.Event()
        self._front: HttpFront | None = None
        self._bound: list[tuple[str, int]] = []
        self._bound_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue[_Queued | None] = queue.Queue(maxsize=MAX_QUEUED + 1)
        self._stats_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS)
        self._pending = 0
        self._busy_since: float | None = None
        self._idle = threading.Condition(self._stats_lock)
        # When each (host, alertname) was last reported resolved, as notifications arrive: an action
        # that waited for the lock is dropped when its alert resolved in the meantime.
        self._resolved_at: dict[tuple[str, str], float] = {}
        # client address -> (when its last refusal was audited, refusals not audited since)
        self._refused: dict[str, tuple[float | None, int]] = {}

    # lifecycle

    def start(self) -> list[tuple[str, int]]:
        """Bind every listener and start serving; return the bound (host, port) pairs."""
        self._front = HttpFront(self, deadline=self.settings.request_deadline,
                                max_connections=self.settings.max_connections)
        for address in self._listeners:
            try:
                self._bound.append(self._front.bind(address))
            except OSError as exc:
                self._front.close()
                raise HealError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        self._bind_optional()
        self._worker = threading.Thread(target=self._work, name="heal-worker", daemon=True)
        self._worker.start()
        self._threads.append(self._worker)
        if self._optional:
            retry = threading.Thread(target=self._retry_optional, name="heal-bind", daemon=True)
            retry.start()
            self._threads.append(retry)
        return self.addresses

    def _bind_optional(self) -> None:
        for address in list(self._optional):
            if self._stopping.is_set() or self._front is None:
                return
            try:
                bound = self._front.bind(address)
            except OSError:
                continue
            with self._bound_lock:
                self._bound.append(bound)
                self._optional.remove(address)

    def _retry_optional(self) -> None:
        while self._optional and not self._stopping.wait(self._retry_interval):
            self._bind_optional()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs served now."""
        with self._bound_lock:
            return list(self._bound)

    @property
    def waiting_addresses(self) -> list[tuple[str, int]]:
        """Optional addresses not bound yet (their interface does not exist)."""
        return list(self._optional)

    def stop(self) -> None:
        """Stop accepting requests, finish the queued alerts, and stop the worker."""
        self._stopping.set()
        if self._front is not None:
            self._front.close()
        with self._bound_lock:
            self._bound.clear()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def __enter__(self) -> HealServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the HTTP side's questions (orchestrator.heal.http.HealApp)

    def authorized(self, header: str) -> bool:
        """Whether an Authorization header value is `Bearer <token>` (compared in constant time)."""
        scheme, _, credentials = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def health(self) -> Reply:
        """200 while the worker runs and is not stuck on one alert; 503 saying why otherwise."""
        worker = self._worker
        with self._stats_lock:
            busy_since = self._busy_since
            queued = self._pending
        if worker is None or not worker.is_alive():
            return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unhealthy", "reason": "the decision worker is not "
                                                    "running", "queued": queued}
        busy_for = None if busy_since is None else time.monotonic() - busy_since
        if busy_for is not None and busy_for > self.settings.stuck_seconds:
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "status": "unhealthy", "queued": queued, "busy_for": round(busy_for, 1),
                "reason": f"the decision worker has been on one alert for {busy_for:.0f} s (more than "
                          f"{self.settings.stuck_seconds:g} s)"}
        return HTTPStatus.OK, {"status": "ok", "queued": queued,
                               "busy_for": None if busy_for is None else round(busy_for, 1)}

    def status(self) -> Reply:
        """/status (token required): the counts and the newest decisions."""
        return HTTPStatus.OK, self.summary()

    def alerts(self, body: bytes) -> Reply:
        """An authorized webhook body: parsed and queued (400 when it is not Alertmanager's)."""
        try:
            payload = json.loads(body)
            alerts = parse_webhook(payload)
        except (ValueError, WebhookError) as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        if not self.submit(alerts, str(payload.get("groupKey", ""))):
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many queued alerts; retry later"}
        return HTTPStatus.OK, {"accepted": len(alerts)}

    # requests

    def submit(self, alerts: Sequence[Alert], group_key: str = "") -> bool:
        """Queue `alerts` for the worker; False when the queue is full.

        A firing alert's host is marked now (`PresentCheck.mark`), so that after the lock the
        worker can tell whether a run moved it since.
        """
        now = self.clock()
        marks = [self._mark(alert) if alert.firing else None for alert in alerts]
        with self._stats_lock:
            if self._pending + len(alerts) > MAX_QUEUED:
                return False
            self._pending += len(alerts)
            for alert in alerts:
                if not alert.firing:
                    if len(self._resolved_at) >= MAX_TRACKED:
                        self._resolved_at.pop(next(iter(self._resolved_at)))
                    self._resolved_at.pop((alert.host, alert.name), None)
                    self._resolved_at[(alert.host, alert.name)] = now
        for alert, mark in zip(alerts, marks, strict=True):
            self._queue.put(_Queued(alert, now, group_key, mark))
        return True

    def _mark(self, alert: Alert) -> object:
        if self.present is None:
            return None
        try:
            return self.present.mark(alert)
        except Exception as exc:  # judged as unknown after the lock (dropped, audited)
            self._log(f"heal: cannot mark {alert.name} on {alert.host or '-'}: {type(exc).__name__}: {exc}")
            return None

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
            if len(self._refused) >= MAX_TRACKED:  # many clients: forget the ones whose interval is over
                self._refused = {c: v for c, v in self._refused.items()
                                 if v[0] is not None and now - v[0] < REFUSED_AUDIT_INTERVAL}
                if len(self._refused) >= MAX_TRACKED:
                    return  # counted above; not audited until some intervals end
            self._refused[client] = (now, 0)
        self._audit(AUDIT_COMMAND, "unauthorized", {"client": client, "path": path, "not_recorded_before": suppressed,
                                                    "reason": "missing or wrong bearer token"})

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
        """Counts per event and the newest decisions (newest last)."""
        with self._stats_lock:
            return {"counts": dict(self._counts), "decisions": list(self._decisions),
                    "actions_in_window": self.policy.actions_in_window(self.clock())}

    # the worker

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._stats_lock:
                self._busy_since = time.monotonic()
            try:
                self._handle(item)
            except Exception as exc:  # one bad alert must not stop the loop; the audit log says why
                self._log(f"heal: {type(exc).__name__} handling {item.alert.name} on {item.alert.host or '-'}: {exc}")
                self._record("error", item.alert, {"error": f"{type(exc).__name__}: {exc}"})
            finally:
                with self._idle:
                    self._busy_since = None
                    self._pending -= 1
                    self._idle.notify_all()

    def _audit(self, command: str, outcome: str, details: Mapping[str, Any], duration: float | None = None) -> None:
        try:
            self.audit.record(command=command, outcome=outcome, duration=duration, details=details)
        except Exception as exc:
            # An audit write that fails (disk full, database locked too long) must not stop the
            # healing; the count shows it in /status and the log says why.
            self.count("audit-error")
            self._log(f"heal: cannot write {outcome} to the audit log: {type(exc).__name__}: {exc}")

    def _record(self, outcome: str, alert: Alert, details: Mapping[str, Any] | None = None,
                duration: float | None = None) -> None:
        self.count(outcome)
        self._audit(AUDIT_COMMAND, outcome, {**alert.as_dict(), **(details or {})}, duration)

    def _handle(self, item: _Queued) -> None:
        alert = item.alert
        self._record("received", alert, {"group_key": item.group_key})
        decision = self.policy.decide(alert, self.clock())
        with self._stats_lock:
            self._decisions.append(decision.as_dict())
        details = {"decision": decision.id, "reason": decision.reason, "action": decision.action}
        if decision.ignored_label is not None:
            self._record("label-ignored", alert, {**details, "label": decision.ignored_label,
                                                  "policy": decision.action or "none"})
        if decision.verdict is not Verdict.ACT:
            self._record(str(decision.verdict), alert, details)
            if decision.escalate:
                self._record("escalated", alert, {**details, "escalation": "circuit breaker open: "
                                                  "remediation stopped, an operator must look"})
            return
        wait = self.settings.lock_wait if self.settings.on_lock == "wait" else 0.0
        ran = False
        try:
            with self.lock.hold(wait, command=decision.action or "remediate") as session:
                ran = self._act(item, decision, details, session)
        except LockBusy as exc:
            self.policy.release(decision)
            self._record("skipped-locked", alert, {**details, "lock": exc.message, "on_lock": self.settings.on_lock})
        except Exception:
            if not ran:
                self.policy.release(decision)
            raise
        finally:
            if not self._queue.empty():
                self._stopping.wait(LOCK_YIELD)

    def _act(self, item: _Queued, decision: Decision, details: dict[str, Any], session: object) -> bool:
        """Inside the lock: drop what is stale, else remediate. True when the remediation ran."""
        alert = item.alert
        with self._stats_lock:
            resolved_at = self._resolved_at.get((alert.host, alert.name))
        if resolved_at is not None and resolved_at > item.received:
            self.policy.release(decision)
            self._record("resolved-while-waiting", alert, details)
            return False
        action = decision.action or ""
        if self.present is not None:
            try:
                present = self.present.facts(alert, action, item.mark, session)
            except Exception as exc:
                present = Present(action=action, firing=None, host_moved=None, window_covers_move=None,
                                  detail=f"{type(exc).__name__}: {exc}")
            dropped = judge(present)
            if dropped is not None:
                self.policy.release(decision)
                self._record("dropped", alert, {**details, "drop": str(dropped[0]), "why": dropped[1]})
                return False
        self._record("acted", alert, details)
        started = time.monotonic()
        try:
            result = self.remediator.remediate(action, alert, session)
        except OrchestratorError as exc:
            result = RemediationResult(ok=False, detail=exc.message)
        except Exception as exc:  # a bug in a remediation is a failed remediation, not a dead worker
            self._log(f"heal: {action} of {alert.name} on {alert.host or '-'} raised {type(exc).__name__}: {exc}")
            result = RemediationResult(ok=False, detail=f"{type(exc).__name__}: {exc}")
        duration = result.duration or (time.monotonic() - started)
        self.policy.finish(decision, self.clock())
        self._record("succeeded" if result.ok else "failed", alert, {**details, "detail": result.detail},
                     duration=duration)
        return True
