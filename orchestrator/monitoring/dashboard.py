"""A Grafana dashboard for an environment, from the same metric names the alert rules use.

    orchestrate monitoring dashboard ENV [-o FILE]

Panels: request rate, error ratio and latency per host and per colour (blue/green, as the
traffic strategies split the app hosts), health probe results and the service's `up`, the
release each host runs, and the alerts firing. Annotations: the environment's deploys and
rollbacks and the canary steps with their gate values, from the run journal. Grafana cannot hold
static events in a dashboard, so each journal event is a constant series of the Prometheus
datasource whose value is the event's time (`useValueForTime`), labelled with its text: plain
PromQL, checked with promtool like every panel query.

Every query uses the rules' metric and job names (orchestrator.monitoring.rules) and their rate
window, so the dashboard shows what the alerts judge. `check_dashboard` checks the structure
(schemaVersion, unique panel ids, grid, targets); `promtool_rules` turns every query into a
recording rule so that `promtool check rules` validates the PromQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.fleet.inventory import Host, colour_halves
from orchestrator.monitoring.rules import (
    HAPROXY_JOB,
    HAPROXY_RESPONSE_TIME,
    HEALTH_JOB,
    PROBE_STATUS,
    PROBE_SUCCESS,
    error_counters,
    rate_window,
)

#: Grafana's dashboard JSON schema version this dashboard is written for (Grafana 10.4+)
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
#: journal events shown as annotations (the newest)
MAX_EVENTS = 30

_RULE_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@dataclass(frozen=True)
class DashboardEvent:
    """A moment worth marking: a deploy or rollback run, or a canary step's gate."""

    kind: str
    """deploy, rollback or canary."""
    at: datetime
    title: str
    text: str
    release: str = ""


def promql_string(value: str) -> str:
    """`value` as a double-quoted PromQL string literal (pure)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _replacement(value: str) -> str:
    # label_replace's replacement expands $1-style references: a literal $ is $$
    return promql_string(value.replace("$", "$$"))


def _hosts_re(names: Iterable[str]) -> str:
    """A regex literal body matching exactly `names` (RE2 metacharacters escaped)."""
    pattern = "|".join(re.sub(r"([^A-Za-z0-9_-])", r"\\\1", n) for n in sorted(names)) or "__none__"
    return pattern.replace("\\", "\\\\").replace('"', '\\"')


def event_expr(events: Sequence[DashboardEvent]) -> str:
    """One constant series per event, valued its time in ms, labelled title/text/kind/release (pure)."""
    parts = []
    for event in events:
        expr = f"vector({int(event.at.timestamp() * 1000)})"
        for label, value in (("title", event.title), ("text", event.text), ("kind", event.kind),
                             ("release", event.release)):
            expr = f'label_replace({expr}, "{label}", {_replacement(value)}, "", "")'
        parts.append(expr)
    return " or ".join(parts)


class _Layout:
    """Panel ids and grid positions, handed out in order."""

    def __init__(self) -> None:
        self.next_id = 1
        self.y = 0
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> dict[str, Any]:
        self._newline()
        panel = {"id": self._id(), "type": "row", "title": title, "collapsed": False, "panels": [],
                 "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self.y}}
        self.y += 1
        return panel

    def panel(self, title: str, targets: list[dict[str, Any]], *, kind: str = "timeseries", unit: str = "short",
              width: int = 8, height: int = 8, description: str = "", **extra: Any) -> dict[str, Any]:
        if self.x + width > GRID_WIDTH:
            self._newline()
        panel = {
            "id": self._id(), "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "targets": [{**t, "refId": chr(ord("A") + i), "datasource": DATASOURCE} for i, t in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else {},
            **extra,
        }
        self.x += width
        self.row_height = max(self.row_height, height)
        return panel

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = self.row_height = 0


def _target(expr: str, legend: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "range": True}


def build_dashboard(loaded: LoadedEnvironment, hosts: Sequence[Host],
                    events: Sequence[DashboardEvent] = ()) -> dict[str, Any]:
    """The dashboard of `loaded` for its fleet `hosts`, with `events` as annotations (pure)."""
    env = loaded.env
    window = rate_window(env)
    health = env.service.health.path
    app = [h for h in hosts if "app" in h.groups]
    counters = error_counters(env)  # the service's own counter, else HAProxy's per server, else none
    per = counters.by.split(",")[0].strip() if counters is not None else "host"

    def requests(extra: str = "", by: str = "") -> str:
        assert counters is not None
        return f"sum{by} (rate({counters.requests(extra)}[{window}]))"

    def errors(extra: str = "", by: str = "") -> str:
        assert counters is not None
        return f"sum{by} (rate({counters.failed(extra)}[{window}])) / {requests(extra, by)}"

    def latency(sel: str, by: str = "") -> str:
        return f"avg{by} ({HAPROXY_RESPONSE_TIME}{{{sel}}})"

    lb = f'job="{HAPROXY_JOB}",proxy="{env.service.name}"'
    has_lb = any("lb" in h.groups for h in hosts) or env.terraform.vars.lb_count > 0
    grid = _Layout()
    panels: list[dict[str, Any]] = [grid.row("Per host")]
    blue, green = colour_halves(app)
    groups = {"blue": blue, "green": green}
    if counters is not None:
        panels.append(grid.panel("Request rate per host", [_target(requests(by=f" by ({per})"), f"{{{{{per}}}}}")],
                                 unit="reqps", description=f"{counters.metric} ({counters.source})"))
        panels.append(grid.panel("Error ratio per host", [_target(errors(by=f" by ({per})"), f"{{{{{per}}}}}")],
                                 unit="percentunit", description=f"the share HighErrorRate judges: {counters.errors}"))
    if has_lb:
        panels.append(grid.panel("Latency per host (load balancer)",
                                 [_target(latency(lb, " by (server)"), "{{server}}")], unit="s",
                                 description=f"{HAPROXY_RESPONSE_TIME}: HAProxy's mean response time per server"))
    panels.append(grid.row("Per colour (blue-green and canary by weight)"))
    label = "server" if counters is not None and counters.source == "haproxy" else "host"
    per_colour = {c: f'{label}=~"{_hosts_re(h.name for h in groups[c])}"' for c in ("blue", "green")}
    per_server = {c: f'{lb},server=~"{_hosts_re(h.name for h in groups[c])}"' for c in ("blue", "green")}
    members = "; ".join(f"{c}: {', '.join(h.name for h in groups[c]) or '-'}" for c in ("blue", "green"))
    if counters is not None:
        rates = [_target(requests(sel), c) for c, sel in per_colour.items()]
        ratios = [_target(errors(sel), c) for c, sel in per_colour.items()]
        panels.append(grid.panel("Request rate per colour", rates, unit="reqps", description=members))
        panels.append(grid.panel("Error ratio per colour", ratios, unit="percentunit"))
    if has_lb:
        panels.append(grid.panel("Latency per colour (load balancer)",
                                 [_target(latency(sel), c) for c, sel in per_server.items()], unit="s"))
    panels.append(grid.row("Health"))
    probe = f'job="{HEALTH_JOB}"'
    panels.append(grid.panel(f"Health probes answered 200, {health}",
                             [_target(f"avg by (host) (avg_over_time({PROBE_SUCCESS}{{{probe}}}[{window}]))",
                                      "{{host}}")], unit="percentunit",
                             description="the blackbox exporter's GET of the health path; HealthFailing fires "
                                         "below 50 %"))
    panels.append(grid.panel("Health endpoint answers (HTTP status)",
                             [_target(f"{PROBE_STATUS}{{{probe}}}", "{{host}}")],
                             kind="state-timeline", description="0: nothing answered (ServiceDown fires)"))
    panels.append(grid.panel("Alerts firing", [_target('sum by (alertname, host) (ALERTS{alertstate="firing"})',
                                                       "{{alertname}} {{host}}")], width=24, height=6))
    annotations: list[dict[str, Any]] = [{
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
    }]
    for kind, name, colour in (("release", "Deploys and rollbacks (journal)", "blue"),
                               ("canary", "Canary steps (journal)", "orange")):
        chosen = [e for e in events if (e.kind == "canary") == (kind == "canary")][-MAX_EVENTS:]
        if chosen:
            annotations.append({
                "datasource": DATASOURCE, "enable": True, "hide": False, "iconColor": colour, "name": name,
                "expr": event_expr(chosen), "step": "60s", "useValueForTime": True,
                "titleFormat": "{{title}}", "textFormat": "{{text}}", "tagKeys": "kind,release",
            })
    return {
        "uid": f"orchestrate-{env.name}"[:40], "title": f"{env.service.name} on {env.name} (orchestrate)",
        "description": f"Rendered by orchestrate from inventories/{env.name}/environment.yml and its journal.",
        "tags": ["orchestrate", env.name, env.service.name], "timezone": "browser", "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s", "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}]},
        "annotations": {"list": annotations},
        "panels": panels,
    }


def queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard: (where, expression) (pure)."""
    found = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            found.append((f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}",
                          str(target.get("expr", ""))))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            found.append((f"annotation {annotation.get('name')!r}", str(annotation["expr"])))
    return found


def check_dashboard(dashboard: Mapping[str, Any]) -> list[str]:
    """What is wrong with the dashboard's structure, as Grafana would see it ([] when nothing) (pure)."""
    problems = []
    schema = dashboard.get("schemaVersion")
    if not isinstance(schema, int) or schema < 36:
        problems.append(f"schemaVersion {schema!r}: expected an integer >= 36")
    uid = dashboard.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 40:
        problems.append(f"uid {uid!r}: expected 1 to 40 characters")
    if not dashboard.get("title"):
        problems.append("no title")
    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        return [*problems, "no panels"]
    seen: set[int] = set()
    for panel in panels:
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in seen:
            problems.append(f"panel {panel.get('title')!r}: id {pid!r} is not a unique integer")
        else:
            seen.add(pid)
        pos = panel.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in ("h", "w", "x", "y")) or pos["x"] + pos["w"] > GRID_WIDTH:
            problems.append(f"panel {pid}: gridPos {pos!r} is not within the {GRID_WIDTH}-column grid")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        refs = [t.get("refId") for t in targets]
        if not targets or len(set(refs)) != len(refs) or not all(t.get("expr") for t in targets):
            problems.append(f"panel {pid} {panel.get('title')!r}: targets need unique refIds and an expr each")
    for annotation in (dashboard.get("annotations") or {}).get("list", []):
        if not annotation.get("name") or "datasource" not in annotation:
            problems.append(f"annotation {annotation!r}: needs a name and a datasource")
    return problems


def promtool_rules(dashboard: Mapping[str, Any]) -> dict[str, Any]:
    """A Prometheus rule file with one recording rule per query, for `promtool check rules` (pure)."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries(dashboard))]
    assert all(_RULE_NAME_RE.match(r["record"]) for r in rules)
    return {"groups": [{"name": "dashboard-queries", "rules": rules}]}


def journal_events(loaded: LoadedEnvironment, limit: int = 50) -> list[DashboardEvent]:
    """Deploys, rollbacks and canary steps of the environment's run journal, oldest first (reads only)."""
    from orchestrator.runs.identity import parse_time
    from orchestrator.runs.journal import JOURNAL_FILE, Journal

    if not (loaded.state_dir / JOURNAL_FILE).exists():
        return []
    with Journal.open(loaded.state_dir, env=loaded.name) as journal:
        runs = journal.runs(limit=limit * 4, with_steps=True)
    found: list[DashboardEvent] = []
    for run in runs:
        for step in run.steps:
            if step.name not in ("deploy", "rollback") or step.state in ("pending", "skipped") or not step.started:
                continue
            detail = step.detail or {}
            release = str(detail.get("release") or run.release or "")
            strategy = str(detail.get("strategy") or "")
            state = str(detail.get("state") or step.state)
            text = (f"{run.command} run {run.id} by {run.user}: {step.name} {release or '-'} "
                    f"({strategy or step.name}, {state})")
            found.append(DashboardEvent(kind=step.name, at=parse_time(step.started), release=release,
                                        title=f"{step.name} {release or ''}".strip(), text=text))
            for decision in detail.get("decisions") or []:
                if not isinstance(decision, dict) or not decision.get("at"):
                    continue
                go = "go" if decision.get("go") else "roll back"
                text = (f"step {decision.get('step')}% {go}: {decision.get('requests')} requests, error ratio "
                        f"{decision.get('error_ratio')}, latency {decision.get('latency_ms')} ms "
                        f"({decision.get('reason')}; {decision.get('source')})")
                found.append(DashboardEvent(kind="canary", at=parse_time(str(decision["at"])), release=release,
                                            title=f"canary {decision.get('step')}% {go}", text=text))
    found.sort(key=lambda e: e.at)
    return found[-limit:]
