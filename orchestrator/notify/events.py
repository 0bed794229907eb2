"""A notification's content: the JSON body every webhook gets, with a human-readable `text` (pure).

The body carries `event`, `env`, `release`, `previous_release`, `state`, `run`, `hosts`, `user` and
`text`; Slack- and Mattermost-compatible incoming webhooks show `text` as the message, any other
receiver reads the fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Notification:
    """One thing that happened to an environment."""

    event: str
    """deploy, rollback, gate_failed, heal, escalation or drift (orchestrator.config.schema.NOTIFY_EVENTS)."""
    env: str
    text: str
    release: str | None = None
    previous_release: str | None = None
    state: str | None = None
    run: str | None = None
    hosts: tuple[str, ...] = ()
    user: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON body posted to every webhook."""
        body: dict[str, Any] = {
            "event": self.event, "env": self.env, "release": self.release,
            "previous_release": self.previous_release, "state": self.state, "run": self.run,
            "hosts": list(self.hosts), "user": self.user, "text": self.text,
        }
        if self.details:
            body["details"] = dict(self.details)
        return body


def _hosts(hosts: Sequence[str]) -> str:
    if not hosts:
        return ""
    shown = ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
    return f" on {shown}"


def _by(user: str, run: str | None) -> str:
    parts = [f"by {user}" if user else "", f"run {run}" if run else ""]
    joined = ", ".join(p for p in parts if p)
    return f" ({joined})" if joined else ""


def release_notification(event: str, env: str, *, release: str | None, previous_release: str | None,
                         state: str, run: str | None, hosts: Sequence[str], user: str, error: str = "",
                         strategy: str = "") -> Notification:
    """A deploy, rollback or failed gate, with its text."""
    how = f" ({strategy})" if strategy and strategy not in ("rolling", "rollback") else ""
    was = f", was {previous_release}" if previous_release and previous_release != release else ""
    if event == "gate_failed":
        back = previous_release or "their previous release"
        text = (f"{env}: {release or 'the release'} failed its health gate{_hosts(hosts)}; the hosts are back on "
                f"{back} ({state}){_by(user, run)}")
    elif event == "rollback":
        verb = "rolled back" if state not in ("failed",) else "rollback FAILED"
        target = f" to {release}" if release else ""
        text = f"{env}: {verb}{target}{how}{_hosts(hosts)}{was}{_by(user, run)}"
    elif state == "failed":
        text = f"{env}: deploy of {release or 'a release'}{how} FAILED{_hosts(hosts)}{_by(user, run)}"
    else:
        text = f"{env}: {release or 'release'} {state}{how}{_hosts(hosts)}{was}{_by(user, run)}"
    if error:
        text += f": {error}"
    details = {"strategy": strategy} if strategy else {}
    if error:
        details["error"] = error
    return Notification(event=event, env=env, text=text, release=release, previous_release=previous_release,
                        state=state, run=run, hosts=tuple(hosts), user=user, details=details)


def heal_notification(env: str, *, outcome: str, alert: str, host: str, action: str, detail: str, user: str,
                      release: str | None = None) -> Notification:
    """A remediation the heal server carried out (`heal`), or its circuit breaker opening (`escalation`)."""
    if outcome == "escalated":
        text = (f"{env}: healing stopped for {alert} on {host}: {detail or 'circuit breaker open'}; "
                "an operator must look")
        event, state = "escalation", "escalated"
    else:
        ok = outcome == "succeeded"
        text = f"{env}: heal {action or 'remediation'} for {alert} on {host} {'succeeded' if ok else 'FAILED'}"
        if detail:
            text += f": {detail}"
        event, state = "heal", outcome
    return Notification(event=event, env=env, text=text, release=release, state=state, hosts=(host,) if host else (),
                        user=user, details={"alert": alert, "action": action, "detail": detail})


def drift_notification(env: str, *, resources: Sequence[str], user: str) -> Notification:
    """Resources changed outside Terraform."""
    shown = ", ".join(resources[:5]) + (f" and {len(resources) - 5} more" if len(resources) > 5 else "")
    count = len(resources)
    text = f"{env}: {count} resource{'s' * (count != 1)} changed outside Terraform: {shown}"
    return Notification(event="drift", env=env, text=text, state="drift", user=user,
                        details={"resources": list(resources)})
