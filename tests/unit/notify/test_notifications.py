"""Notification bodies, bounded retries, secret URLs and the heal server's news (no network: the
posts go to a stand-in; tests/integration/notify posts to a real loopback listener)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from orchestrator.config.schema import NOTIFY_EVENTS, Webhook
from orchestrator.errors import UsageError
from orchestrator.notify.events import drift_notification, heal_notification, release_notification
from orchestrator.notify.heal import NotifyingAudit, heal_notice
from orchestrator.notify.webhooks import Notifier, deliver, retryable, shown_url
from orchestrator.tools.http import HttpAnswer

FIELDS = {"event", "env", "release", "previous_release", "state", "run", "hosts", "user", "text"}


class Poster:
    """Answers posts from a list (the last answer repeats) and keeps what was posted."""

    def __init__(self, *answers: HttpAnswer) -> None:
        self.answers = list(answers)
        self.posted: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, body: Mapping[str, Any], timeout: float) -> HttpAnswer:
        self.posted.append((url, dict(body)))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_a_deploy_body_has_every_field_and_a_readable_text() -> None:
    notice = release_notification("deploy", "dev", release="0.2.0-0123456789ab", previous_release="0.1.0-aaaaaaaaaaaa",
                                  state="deployed", run="20261202T184023-61ee", hosts=["dev-app-1", "dev-app-2"],
                                  user="alice", strategy="rolling")
    body = notice.payload()
    assert set(body) >= FIELDS
    assert body["event"] == "deploy" and body["hosts"] == ["dev-app-1", "dev-app-2"] and body["user"] == "alice"
    assert body["text"] == ("dev: 0.2.0-0123456789ab deployed on dev-app-1, dev-app-2, was 0.1.0-aaaaaaaaaaaa "
                            "(by alice, run 20261202T184023-61ee)")


def test_a_failed_gate_says_where_the_hosts_are() -> None:
    notice = release_notification("gate_failed", "dev", release="0.2.0-0123456789ab",
                                  previous_release="0.1.0-aaaaaaaaaaaa", state="rolled_back", run="r1",
                                  hosts=["dev-app-1"], user="cron", error="health gate failed on dev-app-1")
    assert "failed its health gate on dev-app-1" in notice.text
    assert "back on 0.1.0-aaaaaaaaaaaa (rolled_back)" in notice.text
    assert notice.payload()["details"]["error"] == "health gate failed on dev-app-1"


def test_heal_escalation_and_drift_texts() -> None:
    heal = heal_notification("dev", outcome="succeeded", alert="ServiceDown", host="dev-app-2", action="restart",
                             detail="remediate-restart.yml successful", user="root")
    assert heal.event == "heal" and heal.hosts == ("dev-app-2",) and "restart for ServiceDown" in heal.text
    escalation = heal_notification("dev", outcome="escalated", alert="HighErrorRate", host="dev-app-1", action="",
                                   detail="circuit breaker open", user="root")
    assert escalation.event == "escalation" and "an operator must look" in escalation.text
    drift = drift_notification("prod", resources=[f"aws_instance.app[{i}]" for i in range(7)], user="root")
    assert drift.text.startswith("prod: 7 resources changed outside Terraform") and "and 2 more" in drift.text


def test_retries_are_bounded_and_only_for_what_can_get_better() -> None:
    sleeps: list[float] = []
    flaky = Poster(HttpAnswer(None, error="connection refused"), HttpAnswer(503), HttpAnswer(200))
    ok = deliver("http://127.0.0.1:1/h", {"a": 1}, target="t", event="deploy", post=flaky, sleep=sleeps.append)
    assert ok.ok and ok.attempts == 3 and len(sleeps) == 2
    down = Poster(HttpAnswer(None, error="connection refused"))
    failed = deliver("http://127.0.0.1:1/h", {}, target="t", event="deploy", post=down, sleep=lambda s: None)
    assert not failed.ok and failed.attempts == 3 and failed.error == "connection refused"
    refused = Poster(HttpAnswer(404, error="HTTP 404"))
    once = deliver("http://127.0.0.1:1/h", {}, target="t", event="deploy", post=refused, sleep=lambda s: None)
    assert not once.ok and once.attempts == 1
    assert retryable(HttpAnswer(429)) and not retryable(HttpAnswer(400))


def test_only_subscribed_webhooks_get_the_event_and_all_when_events_are_omitted() -> None:
    hooks = [Webhook.model_validate({"url": "http://127.0.0.1:9/all"}),
             Webhook.model_validate({"url": "http://127.0.0.1:9/deploys", "events": ["deploy"]})]
    assert hooks[0].events == list(NOTIFY_EVENTS)
    poster = Poster(HttpAnswer(200))
    notifier = Notifier(hooks, post=poster, sleep=lambda s: None)
    notice = release_notification("rollback", "dev", release=None, previous_release=None, state="deployed",
                                  run="r", hosts=[], user="u")
    deliveries = notifier.send(notice)
    assert [url for url, _ in poster.posted] == ["http://127.0.0.1:9/all"]
    assert [d.target for d in deliveries] == ["http://127.0.0.1:9/…"]


def test_a_secret_url_comes_from_the_vault_and_never_shows() -> None:
    hook = Webhook.model_validate({"url": {"secret": "SLACK_URL"}, "events": ["deploy"]})
    poster = Poster(HttpAnswer(200))
    notifier = Notifier([hook], secrets=lambda: {"SLACK_URL": "https://hooks.example.com/services/T/B/token"},
                        post=poster, sleep=lambda s: None)
    notice = release_notification("deploy", "dev", release="r", previous_release=None, state="deployed", run="x",
                                  hosts=[], user="u")
    [delivery] = notifier.send(notice)
    assert poster.posted[0][0] == "https://hooks.example.com/services/T/B/token"
    assert delivery.ok and delivery.target == "secret:SLACK_URL" and "token" not in str(delivery.as_dict())

    def no_vault() -> Mapping[str, str]:
        raise UsageError("no vault password")

    [missing] = Notifier([hook], secrets=no_vault, post=poster).send(notice)
    assert not missing.ok and missing.attempts == 0 and "vault" in missing.error
    [absent] = Notifier([hook], secrets=dict, post=poster).send(notice)
    assert not absent.ok and "no secret SLACK_URL" in absent.error


def test_shown_urls_keep_no_token() -> None:
    assert shown_url("https://hooks.slack.com/services/T00/B00/XXXX") == "https://hooks.slack.com/…"
    assert shown_url("https://user:pw@example.com:8443/x?token=1") == "https://example.com:8443/…"


class Audit:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def record(self, *, command: str, outcome: str, duration: float | None = None,
               details: Mapping[str, Any] | None = None) -> object:
        self.entries.append({"command": command, "outcome": outcome, "details": dict(details or {})})
        return self.entries[-1]


def test_the_heal_servers_audit_entries_become_heal_and_escalation_news(project_copy: Any) -> None:
    from orchestrator.config.loader import Project

    loaded = Project(project_copy).load("dev")
    poster = Poster(HttpAnswer(200))
    notifier = Notifier([Webhook.model_validate({"url": "http://127.0.0.1:9/h"})], post=poster)
    audit = Audit()
    sink = NotifyingAudit(audit, loaded, notifier=notifier, background=False)
    alert = {"alertname": "ServiceDown", "host": "dev-app-2", "status": "firing"}
    sink.record(command="heal", outcome="received", details=alert)
    sink.record(command="heal", outcome="succeeded", duration=1.0, details={**alert, "action": "restart",
                                                                            "detail": "remediate-restart.yml"})
    sink.record(command="heal", outcome="escalated", details={**alert, "escalation": "circuit breaker open"})
    assert [e["outcome"] for e in audit.entries] == ["received", "succeeded", "escalated"]
    assert [body["event"] for _, body in poster.posted] == ["heal", "escalation"]
    assert poster.posted[0][1]["hosts"] == ["dev-app-2"]
    assert heal_notice("dev", "failed", alert, "u").state == "failed"


@pytest.mark.parametrize("event", NOTIFY_EVENTS)
def test_every_event_name_is_accepted(event: str) -> None:
    assert Webhook.model_validate({"url": "https://x.example", "events": [event]}).wants(event)
