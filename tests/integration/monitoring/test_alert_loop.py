"""The alerting loop with real programs on loopback: a scrape target dies, the blackbox exporter's
probe of its health path finds nothing answering, Prometheus fires ServiceDown, Alertmanager posts
it to the heal server (real webhook, bearer token), the policy decides, the heal server confirms
with Prometheus that the alert still fires (and Alertmanager's API agrees), the remediation
restarts the target, and the audit log holds the chain."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.config.loader import Project
from orchestrator.fleet.inventory import Host
from orchestrator.heal.policy import Alert, HealPolicy, PolicySettings
from orchestrator.heal.present import JournalPresent, alert_windows
from orchestrator.heal.remediate import ProjectLock
from orchestrator.heal.server import HealServer, HealSettings, RemediationResult
from orchestrator.monitoring.files import (
    BLACKBOX_FILE,
    PROMETHEUS_FILE,
    MonitoringLayout,
    ensure_heal_token,
    read_heal_token,
    render_monitoring_texts,
    write_monitoring,
)
from orchestrator.runs.audit import AuditLog
from orchestrator.tools.alertmanager import Alertmanager, PrometheusAlerts
from tests.support.net import free_port, http_get, wait_http

from .helpers import Processes, prometheus_query, start_target

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "itest-app-1"


@dataclass
class RestartTarget:
    """Remediation for this test: start the scrape target again on its port."""

    processes: Processes
    port: int
    alertmanager: Alertmanager
    calls: list[tuple[str, str, float]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    alertmanager_said: list[bool] = field(default_factory=list)

    def remediate(self, action: str, alert: Alert, session: object = None) -> RemediationResult:
        self.calls.append((action, alert.host, time.monotonic()))
        # the other source of the present: Alertmanager's API holds the alert as active too
        self.alertmanager_said.append(self.alertmanager.firing(alert.name, {"host": alert.host}))
        start_target(self.processes, "target", self.port, "service")
        self.done.set()
        return RemediationResult(ok=True, detail=f"restarted the target on port {self.port}")


def test_killed_target_is_detected_routed_and_remediated(project_copy: Path, tmp_path: Path,
                                                         processes: Processes) -> None:
    loaded = Project(project_copy).load("dev")  # scrape 1s, evaluation 500ms, for 1s
    ports = {name: free_port() for name in ("target", "node", "prometheus", "alertmanager", "heal", "blackbox")}
    start_target(processes, "target", ports["target"], "service")
    start_target(processes, "node", ports["node"], "node")

    token_file = ensure_heal_token(loaded)
    config_dir = tmp_path / "monitoring"
    layout = MonitoringLayout(
        config_dir=str(config_dir),
        prometheus_address=f"127.0.0.1:{ports['prometheus']}",
        alertmanager_address=f"127.0.0.1:{ports['alertmanager']}",
        blackbox_address=f"127.0.0.1:{ports['blackbox']}",
        node_exporter_port=ports["node"],
        service_port=ports["target"],
        webhook_url=f"http://127.0.0.1:{ports['heal']}/alerts",
        token_file=str(token_file),
    )
    write_monitoring(config_dir, render_monitoring_texts(loaded, [Host(HOST, "127.0.0.1", ("app",))], layout))

    remediator = RestartTarget(processes, ports["target"], Alertmanager(f"http://127.0.0.1:{ports['alertmanager']}"))
    audit = AuditLog(loaded.state_dir, env="dev")
    prometheus_alerts = PrometheusAlerts(f"http://127.0.0.1:{ports['prometheus']}")
    present = JournalPresent(loaded.state_dir, env="dev", windows=alert_windows(loaded),
                             firing=lambda: prometheus_alerts)
    server = HealServer(
        policy=HealPolicy(PolicySettings.from_env(loaded.env)), remediator=remediator, audit=audit,
        lock=ProjectLock(loaded), token=read_heal_token(token_file),
        listeners=[("127.0.0.1", ports["heal"])], settings=HealSettings.from_env(loaded.env), present=present,
    )
    server.start()
    try:
        processes.start("alertmanager", [
            "prometheus-alertmanager", f"--config.file={config_dir / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
            "--cluster.listen-address=",
        ])
        # ServiceDown reads the blackbox exporter's probes of the target's health path
        processes.start("blackbox", [
            "prometheus-blackbox-exporter", f"--config.file={config_dir / BLACKBOX_FILE}",
            f"--web.listen-address=127.0.0.1:{ports['blackbox']}",
        ])
        processes.start("prometheus", [
            "prometheus", f"--config.file={config_dir / PROMETHEUS_FILE}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ])
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        wait_http(f"http://127.0.0.1:{ports['alertmanager']}/-/ready", timeout=30)
        wait_http(f"{prometheus}/-/ready", timeout=30)

        # Healthy first: every target is scraped and no alert fires.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ups = {(r["metric"]["job"], r["value"][1]) for r in prometheus_query(prometheus, "up")}
            if ups == {("service", "1"), ("health", "1"), ("node", "1"), ("prometheus", "1")}:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"targets not all up: {ups}\n{processes.log('prometheus')}")
        time.sleep(3)  # longer than `for`: a false alert would have fired by now
        assert prometheus_query(prometheus, "ALERTS") == []
        assert remediator.calls == []

        killed = time.monotonic()
        processes.kill("target")
        assert remediator.done.wait(45), (
            f"no remediation within 45 s\nprometheus:\n{processes.log('prometheus')}\n"
            f"alertmanager:\n{processes.log('alertmanager')}\nheal: {server.summary()}"
        )
        detected = remediator.calls[0][2] - killed
        assert remediator.calls[0][:2] == ("restart", HOST)
        assert detected < 20

        # The restarted target is scraped again and the alert resolves (Alertmanager says so too).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if {r["value"][1] for r in prometheus_query(prometheus, 'up{job="service"}')} == {"1"} and \
                    not prometheus_query(prometheus, 'ALERTS{alertname="ServiceDown"}'):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the target did not come back in Prometheus")
        assert http_get(f"http://127.0.0.1:{ports['target']}/healthz")[0] == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not server.summary()["counts"].get("resolved"):
            time.sleep(0.5)
        assert server.wait_idle(10)
        summary = server.summary()
        # resolved now: both sources say so
        assert not prometheus_alerts.firing("ServiceDown", {"host": HOST})
    finally:
        server.stop()
        audit.close()
        present.close()

    assert summary["counts"].get("resolved", 0) >= 1, summary
    assert len(remediator.calls) == 1  # one death, one remediation
    assert remediator.alertmanager_said == [True]
    with AuditLog(loaded.state_dir, env="dev") as log:
        chain = [(e.outcome, e.details.get("alertname"), e.details.get("host"))
                 for e in reversed(log.entries(command="heal"))]
        assert log.verify() == len(chain)
    firing = [c for c in chain if c[1] == "ServiceDown"]
    assert firing[:3] == [("received", "ServiceDown", HOST), ("acted", "ServiceDown", HOST),
                          ("succeeded", "ServiceDown", HOST)]
    assert ("resolved", "ServiceDown", HOST) in chain
    print(f"kill -> remediation started: {detected:.1f} s")
