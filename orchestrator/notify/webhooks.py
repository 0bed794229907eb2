"""Posting notifications to the environment's webhooks: bounded retries, never an exception.

Every webhook subscribed to the event gets the JSON body, all of them at once; one that does not
answer 2xx is tried again (connection errors, 429 and 5xx; not other 4xx) up to `ATTEMPTS` times
with a short backoff. What happened comes back as `Delivery` records for the caller to keep (the
run's journal step, or the audit log outside a run): a failure to notify never fails what was
being notified. A URL given as `{secret: NAME}` is read from the vault file, and shows in records
only as `secret:NAME`; other URLs show without their path (incoming-webhook paths are tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import SecretRef, Webhook
from orchestrator.errors import OrchestratorError
from orchestrator.notify.events import Notification
from orchestrator.tools import http

#: tries per webhook, seconds per try, seconds between tries
ATTEMPTS = 3
TIMEOUT = 5.0
BACKOFF = (1.0, 2.0)

Post = Callable[[str, Mapping[str, Any], float], http.HttpAnswer]
SecretsLoader = Callable[[], Mapping[str, str]]


def _post(url: str, body: Mapping[str, Any], timeout: float) -> http.HttpAnswer:
    return http.post_json(url, body, timeout=timeout)


@dataclass(frozen=True)
class Delivery:
    """How posting one notification to one webhook went."""

    target: str
    """The webhook as records show it (`https://hooks.example.com/…`, `secret:NAME`)."""
    event: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "event": self.event, "ok": self.ok, "attempts": self.attempts,
                "status": self.status, "error": self.error}


def shown_url(url: str) -> str:
    """`url` without its path and query (pure): webhook paths carry tokens."""
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in host:  # credentials in the URL
        host = host.rsplit("@", 1)[1]
    return f"{scheme}{sep}{host}/…" if sep else "…"


def retryable(answer: http.HttpAnswer) -> bool:
    """Whether a failed post is worth another try (no answer, 429, 5xx) (pure)."""
    return answer.status is None or answer.status == 429 or answer.status >= 500


def deliver(url: str, body: Mapping[str, Any], *, target: str, event: str, post: Post = _post,
            attempts: int = ATTEMPTS, timeout: float = TIMEOUT, backoff: Sequence[float] = BACKOFF,
            sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Post `body` to `url` with bounded retries; the outcome, never an exception."""
    answer = http.HttpAnswer(status=None, error="not tried")
    for attempt in range(1, attempts + 1):
        answer = post(url, body, timeout)
        if answer.ok:
            return Delivery(target=target, event=event, ok=True, attempts=attempt, status=answer.status)
        if not retryable(answer) or attempt == attempts:
            break
        sleep(backoff[min(attempt - 1, len(backoff) - 1)])
    else:  # pragma: no cover - attempts < 1
        attempt = 0
    return Delivery(target=target, event=event, ok=False, attempts=attempt, status=answer.status,
                    error=answer.error or f"HTTP {answer.status}")


class Notifier:
    """The webhooks of one environment."""

    def __init__(self, webhooks: Sequence[Webhook], *, secrets: SecretsLoader | None = None, post: Post = _post,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.webhooks = list(webhooks)
        self._secrets_loader = secrets
        self._secrets: Mapping[str, str] | None = None
        self._post = post
        self._sleep = sleep

    @classmethod
    def for_env(cls, loaded: LoadedEnvironment, *, secrets: Mapping[str, str] | None = None) -> Notifier:
        """The notifier of `loaded`'s `notify:` section. `{secret: NAME}` URLs come from `secrets`
        when given (a deploy has them), else from the vault file when one is used (the vault
        password from ORCHESTRATE_VAULT_PASSWORD_FILE; never a prompt)."""

        def load() -> Mapping[str, str]:
            if secrets is not None:
                return secrets
            from orchestrator.config.secrets import load_secrets

            return load_secrets(loaded)

        return cls(loaded.env.notify.webhooks, secrets=load)

    def wants(self, event: str) -> bool:
        """Whether any webhook is subscribed to `event`."""
        return any(w.wants(event) for w in self.webhooks)

    def _url(self, webhook: Webhook) -> tuple[str | None, str, str]:
        """(URL or None, how records show it, why there is no URL)."""
        if not isinstance(webhook.url, SecretRef):
            return webhook.url, shown_url(webhook.url), ""
        name = webhook.url.secret
        try:
            if self._secrets is None:
                self._secrets = dict(self._secrets_loader()) if self._secrets_loader is not None else {}
            value = self._secrets.get(name)
        except OrchestratorError as exc:
            return None, f"secret:{name}", f"cannot read the vault file: {exc.message}"
        if not value:
            return None, f"secret:{name}", f"no secret {name} in the vault file"
        if not http.is_http_url(value):
            return None, f"secret:{name}", f"secret {name} is not an http:// or https:// URL"
        return value, f"secret:{name}", ""

    def send(self, notification: Notification) -> list[Delivery]:
        """Post `notification` to every webhook subscribed to its event, at once; one Delivery each."""
        chosen = [w for w in self.webhooks if w.wants(notification.event)]
        if not chosen:
            return []
        body = notification.payload()

        def one(webhook: Webhook) -> Delivery:
            url, target, why = self._url(webhook)
            if url is None:
                return Delivery(target=target, event=notification.event, ok=False, attempts=0, error=why)
            return deliver(url, body, target=target, event=notification.event, post=self._post, sleep=self._sleep)

        with ThreadPoolExecutor(max_workers=min(8, len(chosen))) as pool:
            return list(pool.map(one, chosen))


def failures(deliveries: Sequence[Delivery]) -> list[Delivery]:
    return [d for d in deliveries if not d.ok]


def record_outside_run(loaded: LoadedEnvironment, notification: Notification, deliveries: Sequence[Delivery]) -> None:
    """Keep the failed deliveries of a notification sent outside a run (drift, healing) in the audit log."""
    failed = failures(deliveries)
    if not failed:
        return
    from orchestrator.runs.audit import AuditLog

    try:
        with AuditLog(loaded.state_dir, env=loaded.name) as audit:
            audit.record(command="notify", outcome="failed", details={
                "event": notification.event, "text": notification.text,
                "deliveries": [d.as_dict() for d in failed]})
    except OrchestratorError:
        pass  # the audit log could not be written either: nothing more to do without failing the caller


def notify_outside_run(loaded: LoadedEnvironment, notification: Notification) -> list[Delivery]:
    """Send `notification` (no run to record it in): failures go to the audit log."""
    notifier = Notifier.for_env(loaded)
    deliveries = notifier.send(notification)
    record_outside_run(loaded, notification, deliveries)
    return deliveries


def notify_drift(loaded: LoadedEnvironment, resources: Sequence[str]) -> list[Delivery]:
    """Tell the webhooks subscribed to `drift` which resources changed outside Terraform."""
    from orchestrator.notify.events import drift_notification
    from orchestrator.runs.identity import ProcessIdentity

    if not resources or not loaded.env.notify.webhooks:
        return []
    return notify_outside_run(loaded, drift_notification(loaded.name, resources=list(resources),
                                                         user=ProcessIdentity.current().user))
