"""`orchestrate monitoring deploy` places the environment's Grafana dashboard next to Prometheus on
the monitoring host (a real host: the file is read back over SSH)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]


def test_monitoring_deploy_places_the_dashboard_next_to_prometheus(fleet_factory: Any) -> None:
    fleet = fleet_factory(app_count=2, monitoring_count=1)
    orchestrate = str(Path(sys.executable).parent / "orchestrate")
    result = subprocess.run([orchestrate, "--project-dir", str(fleet.project_dir), "monitoring", "deploy", "dev"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    monitor = fleet.group("monitoring")[0]
    text = fleet.ssh(monitor, "cat /etc/prometheus/dashboards/orchestrate.json").stdout
    dashboard = json.loads(text)
    assert dashboard["uid"] == "orchestrate-dev"
    for host in fleet.group("app"):
        assert host.name in text
    assert "hello_requests_total" in text
    # the same file as the controller rendered
    rendered = json.loads((fleet.state_dir / "monitoring" / "dashboard.json").read_text())
    assert rendered == dashboard
