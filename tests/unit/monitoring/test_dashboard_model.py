"""The Grafana dashboard's model (pure): panels, ids, metric names, annotations from journal events.
tests/integration/monitoring/test_dashboard.py runs promtool on every query."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.config.loader import Project
from orchestrator.fleet.inventory import Host
from orchestrator.monitoring.dashboard import (
    DashboardEvent,
    build_dashboard,
    check_dashboard,
    event_expr,
    promql_string,
    promtool_rules,
    queries,
)
from orchestrator.monitoring.files import DASHBOARD_FILE, render_monitoring_texts
from orchestrator.monitoring.rules import (
    HAPROXY_RESPONSE_TIME,
    HEALTH_JOB,
    PROBE_SUCCESS,
    error_counters,
    rate_window,
)

HOSTS = [Host(f"dev-app-{i}", f"10.213.10.{9 + i}", ("app",)) for i in range(1, 4)] + [
    Host("dev-mon-1", "10.213.10.13", ("monitoring",)), Host("dev-lb-1", "10.213.10.14", ("lb",))]
EVENTS = [
    DashboardEvent(kind="deploy", at=datetime(2026, 12, 2, 18, 0, tzinfo=UTC), title="deploy 0.2.0",
                   text='deploy run r1 by alice: "quoted" $1 \\ back', release="0.2.0-0123456789ab"),
    DashboardEvent(kind="canary", at=datetime(2026, 12, 2, 18, 1, tzinfo=UTC), title="canary 25% go",
                   text="step 25% go: 40 requests, error ratio 0.0", release="0.2.0-0123456789ab"),
]


def board(project_copy: Path) -> dict:
    return build_dashboard(Project(project_copy).load("dev"), HOSTS, EVENTS)


def test_structure_passes_its_checks(project_copy: Path) -> None:
    dashboard = board(project_copy)
    assert check_dashboard(dashboard) == []
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "orchestrate-dev"
    json.dumps(dashboard)  # serialisable as it is


def test_the_checks_catch_duplicate_ids_and_missing_queries(project_copy: Path) -> None:
    dashboard = board(project_copy)
    dashboard["panels"][2]["id"] = dashboard["panels"][1]["id"]
    dashboard["panels"][3]["targets"][0]["expr"] = ""
    dashboard["schemaVersion"] = "39"
    problems = check_dashboard(dashboard)
    assert any("not a unique integer" in p for p in problems)
    assert any("targets need" in p for p in problems)
    assert any("schemaVersion" in p for p in problems)


def test_queries_use_the_rules_metrics_job_and_window(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    text = json.dumps(board(project_copy))
    counters = error_counters(loaded.env)
    assert counters is not None  # dev declares the example's metrics
    for name in (counters.metric, PROBE_SUCCESS, HAPROXY_RESPONSE_TIME, f'job=\\"{HEALTH_JOB}\\"',
                 f"[{rate_window(loaded.env)}]", loaded.env.service.health.path):
        assert name in text, name
    titles = [p["title"] for p in board(project_copy)["panels"]]
    for title in ("Request rate per host", "Error ratio per host", "Latency per host (load balancer)",
                  "Request rate per colour", "Error ratio per colour", "Latency per colour (load balancer)"):
        assert title in titles


def test_colours_split_the_app_hosts_as_the_traffic_strategies_do(project_copy: Path) -> None:
    panel = next(p for p in board(project_copy)["panels"] if p["title"] == "Request rate per colour")
    blue, green = (t["expr"] for t in panel["targets"])
    assert "dev-app-1|dev-app-3" in blue and "dev-app-2" in green and "dev-app-1" not in green


def test_journal_events_are_annotations_valued_with_their_time(project_copy: Path) -> None:
    annotations = {a["name"]: a for a in board(project_copy)["annotations"]["list"]}
    deploys = annotations["Deploys and rollbacks (journal)"]
    assert deploys["useValueForTime"] is True
    assert f"vector({int(EVENTS[0].at.timestamp() * 1000)})" in deploys["expr"]
    assert "Canary steps (journal)" in annotations
    # without events: only Grafana's own annotation
    bare = build_dashboard(Project(project_copy).load("dev"), HOSTS)
    assert [a["name"] for a in bare["annotations"]["list"]] == ["Annotations & Alerts"]


def test_label_values_are_escaped_for_promql() -> None:
    assert promql_string('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'
    expr = event_expr(EVENTS[:1])
    assert '\\"quoted\\"' in expr and "$$1" in expr and "\\\\ back" in expr


def test_every_query_becomes_a_recording_rule(project_copy: Path) -> None:
    dashboard = board(project_copy)
    rules = promtool_rules(dashboard)["groups"][0]["rules"]
    assert [r["expr"] for r in rules] == [expr for _, expr in queries(dashboard)]
    assert len({r["record"] for r in rules}) == len(rules)


def test_the_dashboard_is_rendered_with_the_monitoring_files(project_copy: Path) -> None:
    texts = render_monitoring_texts(Project(project_copy).load("dev"), HOSTS)
    assert check_dashboard(json.loads(texts[DASHBOARD_FILE])) == []
