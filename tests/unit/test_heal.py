"""Unit tests of orchestrator.heal: the pure policy, webhook parsing, addresses, and the real HTTP
server (loopback, real requests) with an injected remediation runner."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.loader import Project
from orchestrator.errors import LockBusy, UsageError
from orchestrator.heal.policy import Alert, HealPolicy, PolicySettings, Verdict, WebhookError, parse_webhook
from orchestrator.heal.remediate import ProjectLock
from orchestrator.heal.server import (
    REFUSED_AUDIT_INTERVAL,
    HealServer,
    HealSettings,
    RemediationResult,
    check_bind_address,
    default_listeners,
    parse_listen,
)
from orchestrator.runs.audit import AuditLog
from orchestrator.runs.lock import EnvironmentLock as ProjectEnvironmentLock
from tests.support.cli import run_orchestrate, spawn_orchestrate
from tests.support.net import free_port

TOKEN = "unit-test-token-0123456789"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


#: the heal policy of the rules orchestrate generates (test_policy_rules_are_the_generated_rules checks it)
RULES = {"ServiceDown": "restart", "HealthFailing": "restart", "HighErrorRate": "rollback", "HostUnreachable": "none"}


def alert(name: str = "ServiceDown", host: str = "dev-app-1", remediation: str | None = None,
          status: str = "firing", env: str | None = "dev") -> Alert:
    """An alert as Alertmanager sends it: its `remediation` label is the rule's unless given."""
    labels = {"alertname": name, "host": host, "remediation": RULES.get(name, "none") if remediation is None
              else remediation}
    if env is not None:
        labels["env"] = env
    return Alert(name=name, status=status, labels=labels)


def policy(throttle: float = 30, max_remediations: int = 3, window: float = 600) -> HealPolicy:
    return HealPolicy(PolicySettings(env="dev", throttle=throttle, max_remediations=max_remediations, window=window,
                                     rules=RULES))


# --- the policy ---------------------------------------------------------------------------


def test_first_firing_alert_acts_with_its_remediation() -> None:
    decision = policy().decide(alert(), now=100)
    assert decision.verdict is Verdict.ACT
    assert decision.action == "restart"


def test_same_host_and_alert_is_throttled_until_the_throttle_passes() -> None:
    p = policy(throttle=30)
    assert p.decide(alert(), 100).verdict is Verdict.ACT
    assert p.decide(alert(), 129.9).verdict is Verdict.THROTTLED
    assert p.decide(alert(), 130).verdict is Verdict.ACT


def test_throttle_is_per_host_and_alertname() -> None:
    p = policy()
    assert p.decide(alert(host="a"), 100).verdict is Verdict.ACT
    assert p.decide(alert(host="b"), 100).verdict is Verdict.ACT
    assert p.decide(alert(name="HealthFailing", host="a"), 100).verdict is Verdict.ACT
    assert p.decide(alert(host="a"), 101).verdict is Verdict.THROTTLED


def test_rollback_is_throttled_for_the_whole_environment() -> None:
    p = policy()
    assert p.decide(alert("HighErrorRate", host="a", remediation="rollback"), 100).verdict is Verdict.ACT
    second = p.decide(alert("HighErrorRate", host="b", remediation="rollback"), 101)
    assert second.verdict is Verdict.THROTTLED
    assert "environment" in second.reason


def test_throttle_counts_from_the_end_of_the_remediation() -> None:
    p = policy(throttle=30)
    decision = p.decide(alert(), 100)
    p.finish(decision, 112)  # the remediation took 12 s
    assert p.decide(alert(), 135).verdict is Verdict.THROTTLED
    assert p.decide(alert(), 142).verdict is Verdict.ACT


def test_circuit_opens_after_max_remediations_and_escalates_once() -> None:
    p = policy(throttle=1, max_remediations=3, window=600)
    verdicts = [p.decide(alert(host=f"h{i}"), 100 + i) for i in range(6)]
    assert [d.verdict for d in verdicts] == [Verdict.ACT] * 3 + [Verdict.CIRCUIT_OPEN] * 3
    assert [d.escalate for d in verdicts[3:]] == [True, False, False]
    # once the window has room again the circuit closes and a new opening escalates again
    assert p.decide(alert(host="late"), 100 + 600.5).verdict is Verdict.ACT
    assert p.decide(alert(host="x"), 701).verdict is Verdict.ACT
    assert p.decide(alert(host="y"), 702).verdict is Verdict.ACT
    reopened = p.decide(alert(host="z"), 703)
    assert reopened.verdict is Verdict.CIRCUIT_OPEN and reopened.escalate


def test_flapping_alert_100_times_in_a_minute_acts_at_most_max_remediations() -> None:
    p = policy(throttle=1, max_remediations=3, window=600)
    decisions = [p.decide(alert(), 100 + i * 0.6) for i in range(100)]
    assert sum(d.verdict is Verdict.ACT for d in decisions) == 3
    assert sum(d.escalate for d in decisions) == 1


@pytest.mark.parametrize(
    ("given", "verdict"),
    [
        (alert(status="resolved"), Verdict.RESOLVED),
        (alert("HostUnreachable"), Verdict.NO_ACTION),  # the policy's remediation is none
        (alert("Watchdog"), Verdict.NO_ACTION),  # no rule of the policy
        (alert("HostUnreachable", remediation="rollback"), Verdict.NO_ACTION),  # the label does not decide
        (alert(env="prod"), Verdict.FOREIGN),
        (alert(host=""), Verdict.NO_ACTION),
    ],
)
def test_alerts_that_must_not_act(given: Alert, verdict: Verdict) -> None:
    p = policy()
    assert p.decide(given, 100).verdict is verdict
    assert p.actions_in_window(100) == 0


def test_the_remediation_comes_from_the_policy_not_the_label() -> None:
    p = policy()
    decision = p.decide(alert("HighErrorRate", remediation="restart"), 100)
    assert (decision.verdict, decision.action, decision.ignored_label) == (Verdict.ACT, "rollback", "restart")
    assert p.decide(alert("HealthFailing", host="h2"), 100).ignored_label is None  # the label agrees
    unlabelled = Alert(name="ServiceDown", status="firing", labels={"alertname": "ServiceDown", "host": "h3"})
    assert p.decide(unlabelled, 100).action == "restart"


def test_policy_rules_are_the_generated_rules(project_copy: Path) -> None:
    dev = Project(project_copy).load("dev").env
    assert PolicySettings.from_env(dev).rules == RULES


def test_release_gives_the_reservation_back() -> None:
    p = policy(max_remediations=1)
    decision = p.decide(alert(), 100)
    assert decision.verdict is Verdict.ACT
    p.release(decision)
    assert p.actions_in_window(100) == 0
    assert p.decide(alert(), 101).verdict is Verdict.ACT


# --- webhook parsing and addresses ----------------------------------------------------------


def webhook(*alerts: Alert, status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4", "status": status, "receiver": "heal", "groupKey": "{}:{alertname=\"x\"}",
        "alerts": [{"status": a.status, "labels": dict(a.labels), "annotations": {"summary": "s"},
                    "startsAt": "2026-11-23T17:00:00Z", "fingerprint": f"fp{i}"} for i, a in enumerate(alerts)],
    }


def test_parse_webhook_reads_alertmanager_v4() -> None:
    parsed = parse_webhook(webhook(alert(), alert("HighErrorRate", remediation="rollback")))
    assert [(a.name, a.host, a.remediation_label, a.fingerprint) for a in parsed] == [
        ("ServiceDown", "dev-app-1", "restart", "fp0"), ("HighErrorRate", "dev-app-1", "rollback", "fp1")]
    assert parsed[0].annotations == {"summary": "s"}


@pytest.mark.parametrize("body", [[], {"alerts": "x"}, {"alerts": [1]}, {"alerts": [{"labels": 3}]}])
def test_parse_webhook_rejects_other_shapes(body: Any) -> None:
    with pytest.raises(WebhookError):
        parse_webhook(body)


def test_listen_addresses(project_copy: Path) -> None:
    dev = Project(project_copy).load("dev").env
    prod = Project(project_copy).load("prod").env
    assert parse_listen("127.0.0.1:9095") == ("127.0.0.1", 9095)
    assert parse_listen("[::1]:9095") == ("::1", 9095)
    for bad in ("localhost:1", "127.0.0.1", "127.0.0.1:x"):
        with pytest.raises(UsageError):
            parse_listen(bad)
    check_bind_address(dev, "127.0.0.1")
    check_bind_address(dev, "10.213.10.1")  # dev's bridge gateway
    for refused in ("0.0.0.0", "10.213.10.5", "192.168.1.1"):
        with pytest.raises(UsageError, match="refusing"):
            check_bind_address(dev, refused)
    with pytest.raises(UsageError):
        check_bind_address(prod, "10.213.10.1")  # not prod's bridge (prod has none)
    assert default_listeners(dev) == [("127.0.0.1", 9095), ("10.213.10.1", 9095)]
    assert default_listeners(dev, "127.0.0.1:0") == [("127.0.0.1", 0)]
    assert default_listeners(prod) == [("127.0.0.1", 9095)]


# --- the server over real HTTP ----------------------------------------------------------------


@dataclass
class CountingRemediator:
    """Records every remediation it is asked for; takes `delay` seconds per action."""

    delay: float = 0.0
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def remediate(self, action: str, alert: Alert, session: object = None) -> RemediationResult:
        time.sleep(self.delay)
        self.calls.append((action, alert.host, alert.name))
        return RemediationResult(ok=True, detail="fake remediation")


@dataclass
class MemoryAudit:
    entries: list[dict[str, Any]] = field(default_factory=list)

    def record(self, *, command: str, outcome: str, duration: float | None = None,
               details: Mapping[str, Any] | None = None) -> object:
        self.entries.append({"command": command, "outcome": outcome, "details": dict(details or {})})
        return None

    def outcomes(self) -> list[str]:
        return [e["outcome"] for e in self.entries]


class FreeLock:
    @contextlib.contextmanager
    def hold(self, wait: float, *, command: str = "remediate") -> Iterator[object]:
        yield self


class BusyLock:
    def __init__(self) -> None:
        self.waits: list[float] = []

    @contextlib.contextmanager
    def hold(self, wait: float, *, command: str = "remediate") -> Iterator[object]:
        self.waits.append(wait)
        raise LockBusy("environment dev is locked by a deploy")
        yield self  # pragma: no cover


def post(url: str, body: Any, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@contextlib.contextmanager
def running(remediator: Any, audit: Any, lock: Any = None, *, max_remediations: int = 3,
            throttle: float = 1.0, settings: HealSettings | None = None) -> Iterator[tuple[HealServer, str]]:
    server = HealServer(
        policy=policy(throttle=throttle, max_remediations=max_remediations, window=600),
        remediator=remediator, audit=audit, lock=lock or FreeLock(), token=TOKEN,
        listeners=[("127.0.0.1", 0)], settings=settings,
    )
    host, port = server.start()[0]
    try:
        yield server, f"http://{host}:{port}"
    finally:
        server.stop()


def test_flapping_alert_posted_100_times_triggers_at_most_max_remediations() -> None:
    remediator = CountingRemediator(delay=0.01)
    audit = MemoryAudit()
    with running(remediator, audit, max_remediations=3, throttle=0.05) as (server, base):
        started = time.monotonic()
        statuses = []
        for i in range(100):
            status = "firing" if i % 2 == 0 else "resolved"  # it flaps: firing, resolved, firing...
            statuses.append(post(f"{base}/alerts", webhook(alert(status=status), status=status))[0])
            time.sleep(0.02)
        assert server.wait_idle(30)
        elapsed = time.monotonic() - started
    assert elapsed < 60
    assert statuses == [200] * 100
    assert 1 <= len(remediator.calls) <= 3
    outcomes = audit.outcomes()
    assert outcomes.count("received") == 100
    assert outcomes.count("acted") == len(remediator.calls)
    assert outcomes.count("succeeded") == len(remediator.calls)
    assert outcomes.count("circuit-open") >= 1
    assert outcomes.count("escalated") == 1
    assert outcomes.count("resolved") == 50


def test_requests_without_the_token_are_refused() -> None:
    remediator = CountingRemediator()
    audit = MemoryAudit()
    with running(remediator, audit) as (server, base):
        assert post(f"{base}/alerts", webhook(alert()), token=None)[0] == 401
        assert post(f"{base}/alerts", webhook(alert()), token="wrong")[0] == 401
        assert post(f"{base}/alerts", {"not": "alertmanager"})[0] == 400
        with pytest.raises(urllib.error.HTTPError) as denied:
            _OPENER.open(f"{base}/status", timeout=5)
        assert denied.value.code == 401
        assert server.wait_idle(5)
    assert remediator.calls == []
    # the three refusals from one client within a minute: one audit entry, no decision
    assert audit.outcomes() == ["unauthorized"]
    assert audit.entries[0]["details"]["client"] == "127.0.0.1"
    assert audit.entries[0]["details"]["path"] == "/alerts"
    assert server.summary()["counts"]["unauthorized"] == 3


def test_refusals_are_audited_once_per_client_per_interval() -> None:
    now = [1000.0]
    audit = MemoryAudit()
    server = HealServer(policy=policy(throttle=1.0, max_remediations=3, window=600),
                        remediator=CountingRemediator(), audit=audit, lock=FreeLock(), token=TOKEN,
                        listeners=[("127.0.0.1", 0)], clock=lambda: now[0])
    for _ in range(50):
        server.refuse("10.213.10.20", "/alerts")
    server.refuse("10.213.10.21", "/alerts")
    now[0] += REFUSED_AUDIT_INTERVAL + 1
    server.refuse("10.213.10.20", "/alerts")
    clients = [(e["details"]["client"], e["details"]["not_recorded_before"]) for e in audit.entries]
    assert clients == [("10.213.10.20", 0), ("10.213.10.21", 0), ("10.213.10.20", 49)]
    assert server.summary()["counts"]["unauthorized"] == 52


def test_alert_is_remediated_and_the_chain_recorded() -> None:
    remediator = CountingRemediator()
    audit = MemoryAudit()
    with running(remediator, audit) as (server, base):
        code, body = post(f"{base}/alerts", webhook(alert(host="dev-app-2")))
        assert (code, body) == (200, {"accepted": 1})
        assert server.wait_idle(10)
        request = urllib.request.Request(f"{base}/status", headers={"Authorization": f"Bearer {TOKEN}"})
        with _OPENER.open(request, timeout=5) as response:
            status = json.loads(response.read())
    assert remediator.calls == [("restart", "dev-app-2", "ServiceDown")]
    assert audit.outcomes() == ["received", "acted", "succeeded"]
    assert {e["details"]["host"] for e in audit.entries} == {"dev-app-2"}
    assert audit.entries[1]["details"]["decision"] == audit.entries[2]["details"]["decision"]
    assert status["counts"]["succeeded"] == 1
    assert status["decisions"][0]["verdict"] == "acted"


def test_no_action_while_the_environment_lock_is_held() -> None:
    remediator = CountingRemediator()
    audit = MemoryAudit()
    lock = BusyLock()
    settings = HealSettings(on_lock="skip", lock_wait=120)
    with running(remediator, audit, lock, settings=settings) as (server, base):
        post(f"{base}/alerts", webhook(alert()))
        assert server.wait_idle(10)
        # the skipped action gave its slot back: the next alert is not throttled by it
        assert server.policy.actions_in_window(server.clock()) == 0
    assert remediator.calls == []
    assert lock.waits == [0.0]  # on_lock: skip -> no waiting
    assert audit.outcomes() == ["received", "skipped-locked"]


def test_waits_for_the_real_environment_lock_then_acts(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    remediator = CountingRemediator()
    audit = MemoryAudit()
    deploy_lock = ProjectEnvironmentLock(loaded.state_dir, command="orchestrate deploy dev", heartbeat=None)
    deploy_lock.acquire(0)
    try:
        settings = HealSettings(on_lock="wait", lock_wait=10)
        with running(remediator, audit, ProjectLock(loaded), settings=settings) as (server, base):
            post(f"{base}/alerts", webhook(alert()))
            time.sleep(1.0)
            assert remediator.calls == []  # still waiting for the deploy
            threading.Timer(0.2, deploy_lock.release).start()
            assert server.wait_idle(15)
    finally:
        deploy_lock.release()
    assert remediator.calls == [("restart", "dev-app-1", "ServiceDown")]
    assert audit.outcomes() == ["received", "acted", "succeeded"]


def test_alert_resolved_while_waiting_for_the_lock_is_not_acted_on(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    remediator = CountingRemediator()
    audit = MemoryAudit()
    deploy_lock = ProjectEnvironmentLock(loaded.state_dir, command="orchestrate up dev", heartbeat=None)
    deploy_lock.acquire(0)
    try:
        settings = HealSettings(on_lock="wait", lock_wait=10)
        with running(remediator, audit, ProjectLock(loaded), settings=settings) as (server, base):
            post(f"{base}/alerts", webhook(alert()))
            time.sleep(0.5)
            post(f"{base}/alerts", webhook(alert(status="resolved"), status="resolved"))
            deploy_lock.release()
            assert server.wait_idle(15)
            assert server.policy.actions_in_window(server.clock()) == 0
    finally:
        deploy_lock.release()
    assert remediator.calls == []
    assert audit.outcomes() == ["received", "resolved-while-waiting", "received", "resolved"]


def test_lock_wait_runs_out_and_the_action_is_skipped(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    remediator = CountingRemediator()
    audit = MemoryAudit()
    deploy_lock = ProjectEnvironmentLock(loaded.state_dir, command="orchestrate deploy dev", heartbeat=None)
    deploy_lock.acquire(0)
    try:
        settings = HealSettings(on_lock="wait", lock_wait=0.5)
        with running(remediator, audit, ProjectLock(loaded), settings=settings) as (server, base):
            post(f"{base}/alerts", webhook(alert()))
            assert server.wait_idle(10)
    finally:
        deploy_lock.release()
    assert remediator.calls == []
    assert audit.outcomes() == ["received", "skipped-locked"]
    assert "orchestrate deploy dev" in audit.entries[1]["details"]["lock"]


def test_decisions_reach_the_real_audit_log(tmp_path: Path) -> None:
    remediator = CountingRemediator()
    with AuditLog(tmp_path, env="dev") as audit, running(remediator, audit) as (server, base):
        post(f"{base}/alerts", webhook(alert()))
        assert server.wait_idle(10)
    with AuditLog(tmp_path, env="dev") as log:
        entries = log.entries(command="heal")
        assert [e.outcome for e in reversed(entries)] == ["received", "acted", "succeeded"]
        assert entries[0].details["host"] == "dev-app-1"
        assert log.verify() == 3


# --- the command line ---------------------------------------------------------------------------


def test_serve_refuses_addresses_other_than_loopback_and_bridge(project_copy: Path) -> None:
    for address in ("0.0.0.0:9095", "10.213.10.7:9095", "8.8.8.8:9095"):
        result = run_orchestrate(project_copy, "heal", "serve", "dev", "--listen", address, "--once-for", "1",
                                 timeout=60)
        assert result.returncode == 2, result.stderr
        assert "refusing to listen" in result.stderr


def test_serve_once_for_records_decisions_and_prints_a_summary(project_copy: Path) -> None:
    port = free_port()
    proc = spawn_orchestrate(project_copy, "heal", "serve", "dev", "--listen", f"127.0.0.1:{port}", "--once-for", "4",
                             "--json")
    try:
        token_file = project_copy / ".orchestrate" / "dev" / "heal.token"
        deadline = time.monotonic() + 10
        code = None
        while time.monotonic() < deadline:
            try:
                token = token_file.read_text().strip()
                code = post(f"http://127.0.0.1:{port}/alerts",
                            webhook(alert("HostUnreachable", remediation="none"),
                                    alert(host="not-in-inventory")), token=token)[0]
                break
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        assert code == 200
        assert post(f"http://127.0.0.1:{port}/alerts", webhook(alert()), token="nope")[0] == 401
        state = json.loads((project_copy / ".orchestrate" / "dev" / "heal.json").read_text())
        assert state["pid"] == proc.pid and state["listen"] == [f"127.0.0.1:{port}"]
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert not (project_copy / ".orchestrate" / "dev" / "heal.json").exists()
    summary = json.loads(out)
    assert summary["listen"] == [f"127.0.0.1:{port}"]
    # no inventory, so no monitoring host to ask whether the alert still fires: not acted on
    assert summary["counts"] == {**summary["counts"], "received": 2, "no-action": 1, "dropped": 1}
    assert "acted" not in summary["counts"]
    with AuditLog(project_copy / ".orchestrate" / "dev", env="dev") as log:
        entries = {e.outcome: e for e in log.entries(command="heal")}
    assert entries["dropped"].details["drop"] == "unconfirmed"
    assert "no monitoring host to ask" in entries["dropped"].details["why"]
    assert entries["no-action"].details["alertname"] == "HostUnreachable"


# --- the playbook remediator's own checks (Ansible replaced: pure decision logic) ---------------


def test_rollback_is_not_repeated_back_onto_the_release_it_left(project_copy: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.heal.remediate import PlaybookRemediator
    from orchestrator.release import results
    from orchestrator.release.service import ReleaseOutcome, ReleaseService
    from orchestrator.runs.journal import Journal

    loaded = Project(project_copy).load("dev")
    fleet = {"release": "0.2.0-bbbbbbbbbbbb", "previous": "0.1.0-aaaaaaaaaaaa"}
    rollbacks: list[str | None] = []

    def fake_status(self: Any, *, tuned: bool = True) -> results.FleetStatus:
        hosts = [results.HostStatus(name=f"dev-app-{i}", address=f"10.213.10.{10 + i}", release=fleet["release"],
                                    previous_release=fleet["previous"], unit="active", healthy=True)
                 for i in (1, 2)]
        return results.FleetStatus(env="dev", hosts=hosts, duration=0.1)

    def fake_rollback(self: Any, step: Any, to: str | None, *, tuned: bool = True) -> ReleaseOutcome:
        rollbacks.append(to)
        # what rust_release does on rollback: previous <-> current
        fleet["release"], fleet["previous"] = fleet["previous"], fleet["release"]
        return ReleaseOutcome(env="dev", action="rollback", strategy="rollback", detail={"release": fleet["release"]})

    monkeypatch.setattr(ReleaseService, "fleet_status", fake_status)
    monkeypatch.setattr(ReleaseService, "rollback_step", fake_rollback)
    remediator = PlaybookRemediator(loaded)
    bad = alert("HighErrorRate", remediation="rollback")
    first = remediator.remediate("rollback", bad)
    assert first.ok, first.detail
    assert rollbacks == [None]  # each host to its previous release
    second = remediator.remediate("rollback", bad)
    assert not second.ok
    assert "0.2.0-bbbbbbbbbbbb" in second.detail and "earlier rollback" in second.detail
    assert rollbacks == [None]  # refused without touching the hosts
    # each remediation is a journalled run of its own: the refused one failed
    with Journal.open(loaded.state_dir) as journal:
        runs = journal.runs()
    assert [(r.command, r.state) for r in runs] == [("heal", "failed"), ("heal", "completed")]
    assert runs[0].argv == ["heal", "rollback", "dev"]


def test_restart_only_targets_an_app_host_of_the_inventory(project_copy: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.fleet import playbooks
    from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, write_inventory
    from orchestrator.heal.remediate import PlaybookRemediator
    from orchestrator.tools import ansible

    monkeypatch.setenv("ORCHESTRATE_DIRECT", "0")  # the playbook (the next test: without one)
    loaded = Project(project_copy).load("dev")
    hosts = [Host("dev-app-1", "10.213.10.10", ("app",)), Host("dev-mon-1", "10.213.10.11", ("monitoring",))]
    write_inventory(loaded.state_dir / "inventory.yml",
                    build_inventory("dev", hosts, ConnectionSettings(user="root", private_key=Path("/k"))))
    runs: list[ansible.PlaybookRun] = []

    def fake_run(run: ansible.PlaybookRun, **_: Any) -> ansible.PlaybookResult:
        runs.append(run)
        return ansible.PlaybookResult(run_id=run.run_id, run_dir=run.runs_dir, playbook=run.playbook.name, rc=0,
                                      status="successful", duration=1.0)

    monkeypatch.setattr(playbooks, "run_playbook", fake_run)
    remediator = PlaybookRemediator(loaded)
    assert remediator.remediate("restart", alert(host="dev-app-1")).ok
    assert (runs[0].playbook.name, runs[0].limit) == ("remediate-restart.yml", "dev-app-1")
    assert runs[0].extra_vars["remediate_host"] == "dev-app-1"
    for host in ("dev-mon-1", "elsewhere", "dev-app-1,dev-mon-1"):
        refused = remediator.remediate("restart", alert(host=host))
        assert not refused.ok and "not an app host" in refused.detail
    assert len(runs) == 1
    assert not remediator.remediate("reboot", alert()).ok


def test_a_restart_without_a_playbook_is_one_session_on_the_alerts_app_host(
        project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, write_inventory
    from orchestrator.heal import remediate
    from orchestrator.tools import ansible

    loaded = Project(project_copy).load("dev")
    hosts = [Host("dev-app-1", "10.213.10.10", ("app",)), Host("dev-mon-1", "10.213.10.11", ("monitoring",))]
    write_inventory(loaded.state_dir / "inventory.yml",
                    build_inventory("dev", hosts, ConnectionSettings(user="root", private_key=Path("/k"))))
    calls: list[tuple[list[str], dict[str, Any]]] = []
    outcome = {"rc": 0, "status": "successful"}

    def fake_calls(loaded: Any, targets: list[Host], params_of: Any, **_: Any) -> ansible.PlaybookResult:
        calls.append(([h.name for h in targets], params_of(targets[0])))
        failures = [ansible.Failure("dev-app-1", "restart", "release x was restarted but failed its health gate")] \
            if outcome["rc"] else []
        return ansible.PlaybookResult(run_id="r", run_dir=Path("/r"), playbook="restart", duration=0.1,
                                      failures=failures, **outcome)  # type: ignore[arg-type]

    monkeypatch.setattr(remediate, "run_release_calls", fake_calls)
    remediator = remediate.PlaybookRemediator(loaded)
    done = remediator.remediate("restart", alert(host="dev-app-1"))
    assert done.ok and done.detail.startswith("restart successful")
    assert calls[0][0] == ["dev-app-1"]
    assert calls[0][1]["state"] == "restart" and calls[0][1]["service"] == "hello"
    assert not remediator.remediate("restart", alert(host="dev-mon-1")).ok and len(calls) == 1
    outcome.update(rc=2, status="failed")
    failed = remediator.remediate("restart", alert(host="dev-app-1"))
    assert not failed.ok and "failed its health gate" in failed.detail


def test_optional_listener_is_bound_once_its_address_can_be_bound() -> None:
    import socket

    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    server = HealServer(policy=policy(), remediator=CountingRemediator(), audit=MemoryAudit(), lock=FreeLock(),
                        token=TOKEN, listeners=[("127.0.0.1", 0)], optional_listeners=[("127.0.0.1", port)],
                        retry_interval=0.1)
    server.start()
    try:
        assert server.waiting_addresses == [("127.0.0.1", port)]
        assert len(server.addresses) == 1
        blocker.close()  # the "bridge" appears
        deadline = time.monotonic() + 5
        while server.waiting_addresses and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ("127.0.0.1", port) in server.addresses
        assert post(f"http://127.0.0.1:{port}/alerts", webhook(alert()))[0] == 200
        assert server.wait_idle(5)
    finally:
        server.stop()
        blocker.close()
