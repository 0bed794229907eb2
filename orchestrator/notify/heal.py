"""The heal server's news for the webhooks: every remediation's result (`heal`) and the circuit
breaker opening (`escalation`), taken from what the server records in the audit log.

`NotifyingAudit` wraps the server's audit sink: each entry is written as before, then a
remediation that succeeded or failed, or an escalation, is posted in a background thread (the
server's worker never waits for a webhook); failed posts go to the audit log too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.notify.events import Notification, heal_notification
from orchestrator.notify.webhooks import Notifier, record_outside_run
from orchestrator.runs.identity import ProcessIdentity

#: the heal server's audit command, and its outcomes the webhooks hear of
HEAL_COMMAND = "heal"
NOTIFIED_OUTCOMES = {"succeeded": "heal", "failed": "heal", "escalated": "escalation"}


class AuditRecorder(Protocol):
    def record(self, *, command: str, outcome: str, duration: float | None = None,
               details: Mapping[str, Any] | None = None) -> object: ...


def heal_notice(env: str, outcome: str, details: Mapping[str, Any], user: str) -> Notification:
    """The notification of one heal audit entry (pure)."""
    return heal_notification(
        env, outcome=outcome, alert=str(details.get("alertname", "")), host=str(details.get("host", "")),
        action=str(details.get("action") or ""),
        detail=str(details.get("escalation") or details.get("detail") or details.get("reason") or ""), user=user)


class NotifyingAudit:
    """An audit sink that also tells the webhooks about remediations and escalations."""

    def __init__(self, audit: AuditRecorder, loaded: LoadedEnvironment, *, notifier: Notifier | None = None,
                 background: bool = True) -> None:
        self.audit = audit
        self.loaded = loaded
        self.notifier = notifier or Notifier.for_env(loaded)
        self.background = background
        self.user = ProcessIdentity.current().user
        self.threads: list[threading.Thread] = []

    def record(self, *, command: str, outcome: str, duration: float | None = None,
               details: Mapping[str, Any] | None = None) -> object:
        entry = self.audit.record(command=command, outcome=outcome, duration=duration, details=details)
        event = NOTIFIED_OUTCOMES.get(outcome) if command == HEAL_COMMAND else None
        if event is not None and self.notifier.wants(event):
            notice = heal_notice(self.loaded.name, outcome, details or {}, self.user)
            if self.background:
                thread = threading.Thread(target=self._send, args=(notice,), daemon=True, name="heal-notify")
                self.threads = [t for t in self.threads if t.is_alive()] + [thread]
                thread.start()
            else:
                self._send(notice)
        return entry

    def _send(self, notice: Notification) -> None:
        # a notification must never stop the healing loop
        with contextlib.suppress(Exception):
            record_outside_run(self.loaded, notice, self.notifier.send(notice))

    def close(self) -> None:
        closer = getattr(self.audit, "close", None)
        if callable(closer):
            closer()
