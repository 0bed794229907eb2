"""The heal policy, pure and clock-free: which alert gets which remediation, the throttle per
(host, alert), and the circuit breaker that stops acting and escalates.

The remediation of an alert is the policy's, by alert name: the rules orchestrate generates
(orchestrator.monitoring.rules.alert_rules, each with its `remediation`). The `remediation`
label an alert carries on the webhook is only a hint for Alertmanager's routing: a label that
disagrees with the policy is ignored (and the heal server audits it).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.config.schema import Environment
from orchestrator.config.types import parse_duration
from orchestrator.errors import OrchestratorError
from orchestrator.monitoring.rules import REMEDIATIONS, alert_rules

#: throttle key of environment-wide actions (a rollback concerns every host)
ENVIRONMENT_KEY = "*"


class HealError(OrchestratorError):
    """The heal server could not start or a webhook payload was malformed."""


class WebhookError(HealError):
    """A webhook body that is not an Alertmanager notification."""


@dataclass(frozen=True)
class Alert:
    """One alert of an Alertmanager webhook notification."""

    name: str
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    starts_at: str = ""

    @property
    def host(self) -> str:
        return self.labels.get("host", "")

    @property
    def remediation_label(self) -> str:
        """The `remediation` label as sent (routing only: the policy decides the remediation)."""
        return self.labels.get("remediation", "")

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    def as_dict(self) -> dict[str, Any]:
        return {"alertname": self.name, "status": self.status, "host": self.host,
                "remediation_label": self.remediation_label, "fingerprint": self.fingerprint,
                "starts_at": self.starts_at, "summary": self.annotations.get("summary", "")}


def parse_webhook(payload: Any) -> list[Alert]:
    """The alerts of an Alertmanager webhook body (version 4); WebhookError when it is not one."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise WebhookError("expected an Alertmanager notification: a JSON object with an `alerts` list")
    alerts = []
    for index, item in enumerate(payload["alerts"]):
        if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
            raise WebhookError(f"alerts[{index}]: expected an object with `labels`")
        labels = {str(k): str(v) for k, v in item["labels"].items()}
        annotations = item.get("annotations") if isinstance(item.get("annotations"), dict) else {}
        alerts.append(Alert(
            name=labels.get("alertname", ""),
            status=str(item.get("status") or payload.get("status") or ""),
            labels=labels,
            annotations={str(k): str(v) for k, v in (annotations or {}).items()},
            fingerprint=str(item.get("fingerprint", "")),
            starts_at=str(item.get("startsAt", "")),
        ))
    return alerts


class Verdict(StrEnum):
    """What the policy decided for one alert; also the audit log's outcome of the decision."""

    ACT = "acted"
    RESOLVED = "resolved"
    NO_ACTION = "no-action"
    UNKNOWN_REMEDIATION = "unknown-remediation"
    FOREIGN = "foreign"
    THROTTLED = "throttled"
    CIRCUIT_OPEN = "circuit-open"


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one alert at one moment."""

    verdict: Verdict
    alert: Alert
    reason: str
    action: str | None = None
    escalate: bool = False
    at: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    keys: tuple[tuple[str, str], ...] = ()
    previous: tuple[tuple[tuple[str, str], float | None], ...] = ()
    ignored_label: str | None = None
    """The alert's `remediation` label when it disagrees with the policy (ignored)."""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "verdict": str(self.verdict), "action": self.action, "reason": self.reason,
                "escalate": self.escalate, **self.alert.as_dict()}


@dataclass(frozen=True)
class PolicySettings:
    """The numbers the policy works with, in seconds."""

    env: str
    throttle: float
    max_remediations: int
    window: float
    rules: Mapping[str, str] = field(default_factory=dict)
    """alert name -> remediation (restart, rollback or none): the heal policy."""
    remediations: frozenset[str] = frozenset(r for r in REMEDIATIONS if r != "none")

    @classmethod
    def from_env(cls, env: Environment) -> PolicySettings:
        """Settings from the environment's `healing:` section; the rules from its alert rules."""
        return cls(
            env=env.name,
            throttle=parse_duration(env.healing.throttle),
            max_remediations=env.healing.max_remediations,
            window=parse_duration(env.healing.window),
            rules=heal_rules(env),
        )


def heal_rules(env: Environment) -> dict[str, str]:
    """The heal policy of `env`: each alert rule's name and remediation."""
    return {rule.name: rule.remediation for rule in alert_rules(env)}


class HealPolicy:
    """Decides, per alert and moment, whether to remediate; remembers what it allowed.

    Thread-safe. `decide` reserves the action it allows (throttle entry and circuit slot);
    `release` gives the reservation back when the action did not run (lock busy).
    """

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._actions: deque[float] = deque()
        self._escalated = False

    def decide(self, alert: Alert, now: float) -> Decision:
        """The decision for `alert` at time `now` (seconds, any monotonic origin)."""
        s = self.settings
        alert_env = alert.labels.get("env")
        if alert_env is not None and alert_env != s.env:
            return Decision(Verdict.FOREIGN, alert, f"alert of environment {alert_env!r}, not {s.env!r}", at=now)
        if not alert.firing:
            return Decision(Verdict.RESOLVED, alert, f"alert is {alert.status or 'not firing'}", at=now)
        remediation = s.rules.get(alert.name)
        label = alert.remediation_label
        ignored = label if label and label != remediation else None
        if remediation is None:
            known = ", ".join(sorted(s.rules)) or "none"
            return Decision(Verdict.NO_ACTION, alert, f"no heal policy for alert {alert.name!r} (policy: {known})",
                            at=now, ignored_label=ignored)
        if remediation == "none":
            return Decision(Verdict.NO_ACTION, alert, f"the policy for {alert.name} is no remediation", at=now,
                            ignored_label=ignored)
        if remediation not in s.remediations:
            return Decision(Verdict.UNKNOWN_REMEDIATION, alert,
                            f"remediation {remediation!r} is not one of {', '.join(sorted(s.remediations))}", at=now)
        if remediation == "restart" and not alert.host:
            return Decision(Verdict.NO_ACTION, alert, "restart needs a `host` label; the alert has none", at=now,
                            ignored_label=ignored)
        keys = [(alert.host, alert.name)]
        if remediation == "rollback":
            keys.append((ENVIRONMENT_KEY, "rollback"))
        with self._lock:
            while self._actions and self._actions[0] <= now - s.window:
                self._actions.popleft()
            for key in keys:
                last = self._last.get(key)
                if last is not None and now - last < s.throttle:
                    what = "the environment" if key[0] == ENVIRONMENT_KEY else f"{key[1]} on {key[0] or '?'}"
                    return Decision(Verdict.THROTTLED, alert,
                                    f"{remediation} of {what} ran {now - last:.1f} s ago "
                                    f"(healing.throttle {s.throttle:g} s)", action=remediation, at=now,
                                    ignored_label=ignored)
            if len(self._actions) >= s.max_remediations:
                escalate = not self._escalated
                self._escalated = True
                return Decision(Verdict.CIRCUIT_OPEN, alert,
                                f"{len(self._actions)} remediations in the last {s.window:g} s "
                                f"(healing.max_remediations {s.max_remediations}); not acting",
                                action=remediation, escalate=escalate, at=now, ignored_label=ignored)
            self._escalated = False
            previous = tuple((key, self._last.get(key)) for key in keys)
            for key in keys:
                self._last[key] = now
            self._actions.append(now)
            return Decision(Verdict.ACT, alert, f"remediation {remediation}", action=remediation, at=now,
                            keys=tuple(keys), previous=previous, ignored_label=ignored)

    def finish(self, decision: Decision, now: float) -> None:
        """Restart the throttle of an ACT decision when its action has ended.

        The throttle counts from the end of a remediation: a rollback takes seconds, and the alert
        that asked for it needs time after the fix to clear (a rate window), so counting from the
        start would let a still-firing alert trigger the action again right after it finished.
        """
        if decision.verdict is not Verdict.ACT:
            return
        with self._lock:
            for key in decision.keys:
                if self._last.get(key, now) <= now:
                    self._last[key] = now

    def release(self, decision: Decision) -> None:
        """Undo the reservation of an ACT decision whose action did not run."""
        if decision.verdict is not Verdict.ACT:
            return
        with self._lock:
            with contextlib.suppress(ValueError):
                self._actions.remove(decision.at)
            for key, last in decision.previous:
                if last is None:
                    self._last.pop(key, None)
                else:
                    self._last[key] = last

    def actions_in_window(self, now: float) -> int:
        """Remediations allowed within the window ending at `now`."""
        with self._lock:
            return sum(1 for t in self._actions if t > now - self.settings.window)
