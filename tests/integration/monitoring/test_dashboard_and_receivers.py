"""The Grafana dashboard passes its checks with the real promtool (and they fail on a broken query),
carries the journal's deploys and canary steps, and Alertmanager posts its alerts to the notify
webhooks (a real Alertmanager on loopback, a listener on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config.loader import Project
from orchestrator.fleet.inventory import Host
from orchestrator.monitoring.checks import verify_dashboard
from orchestrator.monitoring.files import ALERTMANAGER_FILE, MonitoringLayout, render_monitoring_texts, write_monitoring
from orchestrator.monitoring.rules import HAPROXY_RESPONSE_TIME, PROBE_SUCCESS
from orchestrator.runs.journal import Journal
from tests.support.net import OPENER, free_port, wait_http

from .helpers import Processes

pytestmark = pytest.mark.integration

HOSTS = [Host("dev-app-1", "10.213.10.10", ("app",)), Host("dev-app-2", "10.213.10.11", ("app",)),
         Host("dev-mon-1", "10.213.10.12", ("monitoring",)), Host("dev-lb-1", "10.213.10.13", ("lb",))]


def journal_with_a_canary_release(project: Path) -> str:
    """A completed deploy run of dev with two gate decisions, as the release service records them."""
    state = project / ".orchestrate" / "dev"
    state.mkdir(parents=True, exist_ok=True)
    with Journal.open(state, env="dev") as journal:
        run = journal.start_run("deploy", ["deploy", "dev", "--release", "/srv/hello"], steps=["deploy"])
        with run.step("deploy") as step:
            step.update(strategy="canary-traffic", release="0.2.0-0123456789ab", state="promoted", decisions=[
                {"step": 10, "go": True, "requests": 40, "failed": 0, "error_ratio": 0.0, "latency_ms": 2.5,
                 "reason": "within limits", "source": "prometheus", "at": "2026-12-02T18:00:10Z"},
                {"step": 100, "go": True, "requests": 400, "failed": 0, "error_ratio": 0.0, "latency_ms": 2.1,
                 "reason": "within limits", "source": "prometheus", "at": "2026-12-02T18:00:40Z"}])
        run.set_release("0.2.0-0123456789ab")
        run.complete()
        return run.id


def write_inventory(project: Path) -> None:
    from orchestrator.fleet.inventory import ConnectionSettings, build_inventory, write_inventory

    path = project / ".orchestrate" / "dev" / "inventory.yml"
    write_inventory(path, build_inventory("dev", HOSTS, ConnectionSettings(user="root", private_key=project / "k")))


def test_the_dashboard_passes_promtool_and_names_the_metrics(project_copy: Path, tmp_path: Path) -> None:
    run_id = journal_with_a_canary_release(project_copy)
    write_inventory(project_copy)
    out = tmp_path / "dashboard.json"
    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "monitoring", "dashboard", "dev", "-o",
                                      str(out), "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert all(c["ok"] for c in report["checks"]), report["checks"]
    assert {c["name"] for c in report["checks"]} == {"dashboard structure", "dashboard queries (promtool check rules)"}
    assert "SUCCESS" in next(c["detail"] for c in report["checks"] if "promtool" in c["name"])
    dashboard = json.loads(out.read_text())
    text = out.read_text()
    assert dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # the environment's own request counter (dev declares hello's), the health probes, HAProxy's latency
    for name in ("hello_requests_total", PROBE_SUCCESS, HAPROXY_RESPONSE_TIME, "dev-app-1", "dev-app-2"):
        assert name in text, name
    annotations = {a["name"]: a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a}
    assert run_id in annotations["Deploys and rollbacks (journal)"]
    assert "canary 10% go" in annotations["Canary steps (journal)"]
    assert "canary 100% go" in annotations["Canary steps (journal)"]


def test_a_broken_query_fails_the_promtool_check(project_copy: Path) -> None:
    from orchestrator.monitoring.dashboard import build_dashboard

    dashboard = build_dashboard(Project(project_copy).load("dev"), HOSTS)
    dashboard["panels"][1]["targets"][0]["expr"] = "sum by (host (rate(x[1m]))"
    checks = {c.name: c for c in verify_dashboard(dashboard)}
    assert checks["dashboard structure"].ok
    assert not checks["dashboard queries (promtool check rules)"].ok


class Listener:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts-to-chat"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_alertmanager_posts_its_alerts_to_the_notify_webhooks(project_copy: Path, tmp_path: Path,
                                                              processes: Processes) -> None:
    listener = Listener()
    try:
        env_file = project_copy / "inventories" / "dev" / "environment.yml"
        data = yaml.safe_load(env_file.read_text())
        data["notify"] = {"webhooks": [{"url": listener.url},
                                       {"url": "http://127.0.0.1:9/deploys-only", "events": ["deploy"]},
                                       {"url": {"secret": "CHAT_URL"}}]}
        env_file.write_text(yaml.safe_dump(data, sort_keys=False))
        loaded = Project(project_copy).load("dev")
        port = free_port()
        config_dir = tmp_path / "monitoring"
        layout = MonitoringLayout(config_dir=str(config_dir), token_file=str(config_dir / "heal.token"),
                                  webhook_url="http://127.0.0.1:9/heal")
        write_monitoring(config_dir, render_monitoring_texts(loaded, HOSTS, layout))
        (config_dir / "heal.token").write_text("t\n")
        rendered = (config_dir / ALERTMANAGER_FILE).read_text()
        assert rendered.count(listener.url) == 2  # both receivers
        assert "deploys-only" not in rendered and "CHAT_URL" not in rendered
        processes.start("alertmanager", [
            "prometheus-alertmanager", f"--config.file={config_dir / ALERTMANAGER_FILE}",
            f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address="])
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=30)
        alert = [{"labels": {"alertname": "HostUnreachable", "env": "dev", "host": "dev-app-1",
                             "remediation": "none", "severity": "critical"},
                  "annotations": {"summary": "host dev-app-1 is unreachable"}}]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/alerts", data=json.dumps(alert).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        OPENER.open(request, timeout=5).close()
        deadline = time.monotonic() + 30
        while not listener.bodies and time.monotonic() < deadline:
            time.sleep(0.2)
        assert listener.bodies, processes.log("alertmanager")
        body = listener.bodies[0]
        assert body["receiver"] == "default"
        assert body["alerts"][0]["labels"]["alertname"] == "HostUnreachable"
    finally:
        listener.server.shutdown()
        listener.server.server_close()
