"""Delivery metrics for Prometheus: the run journal's figures (orchestrator.runs.report) written for
the node exporter's textfile collector on the monitoring host, and dashboard panels that read them.

    orchestrate_deploys_total{strategy, result}          deployments by how they ended (succeeded,
                                                         gate_failed, error)
    orchestrate_change_failures_total{strategy}          deployments that failed their gate or were
                                                         rolled back
    orchestrate_rollbacks_total{strategy, by}            rollbacks (by: operator, heal)
    orchestrate_deploy_duration_seconds{strategy}        histogram of the deploy steps' durations
    orchestrate_lead_time_seconds{strategy}              histogram: build to serving
    orchestrate_time_to_restore_seconds{strategy}        histogram: failed release to healthy fleet
    orchestrate_pipeline_step_seconds_total{step}        time spent in each step of every run
    orchestrate_pipeline_steps_total{step}               how many times each step ran
    orchestrate_last_deploy_timestamp_seconds{strategy}  when the latest deployment ended
    orchestrate_delivery_metrics_timestamp_seconds       when the file was written

Counted over the whole journal (not a window): the counters only grow, as Prometheus expects, and
every strategy's series exist from the first file on. The file is written again after every run
that holds the environment lock for a release (deploy, rollback, up, the heal server's remediations)
and by `orchestrate report ENV --export`; a monitoring host that cannot be reached never changes
how the run itself ended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import OrchestratorError
from orchestrator.fleet.inventory import fleet_hosts
from orchestrator.monitoring.logs import monitoring_host, run_on_monitor
from orchestrator.runs.identity import utcnow
from orchestrator.runs.journal import JOURNAL_FILE, Journal
from orchestrator.runs.report import RESULTS, DeliveryReport, Deployment, by_strategy, delivery_report

#: the node exporter's textfile directory on the monitoring host (roles/log_events uses it too)
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


TEXTFILE = "orchestrate_delivery.prom"


#: histogram buckets in seconds: a deploy takes seconds to minutes, a lead time up to days
BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0, 604800.0)


#: how long the upload to the monitoring host may take
PUBLISH_TIMEOUT_S = 20


def _labels(**labels: str) -> str:
    body = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return f"{{{body}}}" if body else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _histogram(name: str, values: Sequence[float], **labels: str) -> list[str]:
    lines = []
    for bound in BUCKETS:
        count = sum(1 for v in values if v <= bound)
        lines.append(f"{name}_bucket{_labels(**labels, le=_number(bound))} {count}")
    lines.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {len(values)}")
    lines.append(f"{name}_sum{_labels(**labels)} {_number(round(math.fsum(values), 3))}")
    lines.append(f"{name}_count{_labels(**labels)} {len(values)}")
    return lines


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def exposition(report: DeliveryReport, *, now: datetime | None = None) -> str:
    """The textfile of `report` (a report over the whole journal) in Prometheus' text format (pure)."""
    now = now or utcnow()
    groups = by_strategy(report.deployments)
    out: list[str] = []
    out += _family("orchestrate_deploys_total", "counter",
                   "Deployments recorded in the run journal, by strategy and how they ended.",
                   (f"orchestrate_deploys_total{_labels(strategy=s, result=r)} "
                    f"{sum(1 for d in ds if d.result == r)}" for s, ds in groups.items() for r in RESULTS))
    out += _family("orchestrate_change_failures_total", "counter",
                   "Deployments that failed their gate or were rolled back (operator or heal server).",
                   (f"orchestrate_change_failures_total{_labels(strategy=s)} {sum(1 for d in ds if d.failed_change)}"
                    for s, ds in groups.items()))
    out += _family("orchestrate_rollbacks_total", "counter",
                   "Rollbacks charged to the deployment they undid, by who rolled back.",
                   (f"orchestrate_rollbacks_total{_labels(strategy=s, by=by)} "
                    f"{sum(1 for d in ds if d.rolled_back_by == by)}"
                    for s, ds in groups.items() for by in ("operator", "heal")))
    histograms: list[tuple[str, str, Callable[[Deployment], float | None]]] = [
        ("orchestrate_deploy_duration_seconds", "How long deploy steps took.", lambda d: d.duration),
        ("orchestrate_lead_time_seconds", "From a release's build to the end of the deploy that made it serve.",
         lambda d: d.lead_time),
        ("orchestrate_time_to_restore_seconds", "From a failed release to a healthy fleet on the release before.",
         lambda d: d.time_to_restore),
    ]
    for name, help_text, value in histograms:
        samples: list[str] = []
        for strategy, ds in groups.items():
            samples += _histogram(name, [v for v in (value(d) for d in ds) if v is not None], strategy=strategy)
        out += _family(name, "histogram", help_text, samples)
    out += _family("orchestrate_pipeline_step_seconds_total", "counter",
                   "Time spent in each step of every run (up, deploy, rollback, heal, ...).",
                   (f"orchestrate_pipeline_step_seconds_total{_labels(step=s.name)} {_number(round(s.seconds, 3))}"
                    for s in report.steps))
    out += _family("orchestrate_pipeline_steps_total", "counter", "How many times each step ran.",
                   (f"orchestrate_pipeline_steps_total{_labels(step=s.name)} {s.runs}" for s in report.steps))
    out += _family("orchestrate_last_deploy_timestamp_seconds", "gauge",
                   "When the latest deployment of each strategy ended (Unix time).",
                   (f"orchestrate_last_deploy_timestamp_seconds{_labels(strategy=s)} "
                    f"{_number(round(max(d.finished for d in ds).timestamp(), 3))}"
                    for s, ds in groups.items() if ds))
    out += _family("orchestrate_delivery_metrics_timestamp_seconds", "gauge",
                   "When orchestrate wrote these metrics from its run journal (Unix time).",
                   [f"orchestrate_delivery_metrics_timestamp_seconds {_number(round(now.timestamp(), 3))}"])
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Published:
    """Where the delivery metrics went."""

    host: str
    path: str
    deploys: int

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "deploys": self.deploys}


def upload_argv(directory: str = TEXTFILE_DIR, name: str = TEXTFILE) -> list[str]:
    """The monitoring host's command that replaces the textfile with its stdin atomically (pure)."""
    tmp = f"{directory}/.{name}.tmp"
    return ["sh", "-c", 'umask 022 && cat > "$1" && mv -f "$1" "$2"', "sh", tmp, f"{directory}/{name}"]


def publish_delivery_metrics(loaded: LoadedEnvironment) -> Published | None:
    """Write the journal's delivery metrics on the monitoring host; None without one (nothing to do).

    LogsError / CommandError when the monitoring host cannot be written.
    """
    monitor = monitoring_host(fleet_hosts(loaded))
    if monitor is None or not loaded.env.monitoring.enabled or not (loaded.state_dir / JOURNAL_FILE).exists():
        return None
    with Journal.open(loaded.state_dir, env=loaded.name) as journal:
        report = delivery_report(journal, since=None)
    run_on_monitor(loaded, monitor, upload_argv(), input_text=exposition(report), timeout=PUBLISH_TIMEOUT_S)
    return Published(host=monitor.name, path=f"{TEXTFILE_DIR}/{TEXTFILE}", deploys=report.overall.deploys)


def publish_after_run(loaded: LoadedEnvironment, info: Callable[[str], None] | None = None) -> Published | None:
    """`publish_delivery_metrics`, best effort: a failure is a message, never an error."""
    try:
        return publish_delivery_metrics(loaded)
    except OrchestratorError as exc:
        if info is not None:
            info(f"delivery metrics not written on the monitoring host: {exc.message}")
        return None


# --- dashboard ------------------------------------------------------------------------------------

#: the datasource variable the panels use; a dashboard generator defines it
DATASOURCE = "${datasource}"


def _panel(kind: str, title: str, exprs: Sequence[tuple[str, str]], *, unit: str, grid: tuple[int, int, int, int],
           description: str, datasource: str) -> dict[str, Any]:
    """A Grafana panel; `grid` is (x, y, width, height) in grid units."""
    source = {"type": "prometheus", "uid": datasource}
    x, y, w, h = grid
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": source,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": source, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(exprs)],
    }


def delivery_panels(datasource: str = DATASOURCE, *, y: int = 0) -> list[dict[str, Any]]:
    """Grafana panels of the delivery metrics (a row of figures, then trends), from row `y` down.

    Data only: a dashboard generator includes them as they are (its `datasource` variable names the
    Prometheus of the monitoring host).
    """
    window = "30d"
    deploys = f"sum(increase(orchestrate_deploys_total[{window}]))"

    def quantile(metric: str, q: float) -> str:
        return f"histogram_quantile({q}, sum by (le) (increase({metric}_bucket[{window}])))"

    return [
        _panel("stat", "Deployments per day", [(f"{deploys} / 30", "")], unit="short", grid=(0, y, 6, 4),
               datasource=datasource,
               description=f"Deployments over the last {window}, per day (orchestrate_deploys_total)."),
        _panel("stat", "Change failure rate",
               [(f"sum(increase(orchestrate_change_failures_total[{window}])) / clamp_min({deploys}, 1)", "")],
               unit="percentunit", grid=(6, y, 6, 4), datasource=datasource,
               description="Deployments that failed their gate or were rolled back, over all deployments."),
        _panel("stat", "Lead time (median)", [(quantile("orchestrate_lead_time_seconds", 0.5), "")], unit="s",
               grid=(12, y, 6, 4), datasource=datasource,
               description="From a release's build to the end of the deploy that made it serve."),
        _panel("stat", "Time to restore (median)", [(quantile("orchestrate_time_to_restore_seconds", 0.5), "")],
               unit="s", grid=(18, y, 6, 4), datasource=datasource,
               description="From a failed release to a healthy fleet on the release before."),
        _panel("timeseries", "Deployments by strategy and result",
               [("sum by (strategy, result) (increase(orchestrate_deploys_total[1d]))", "{{strategy}} {{result}}")],
               unit="short", grid=(0, y + 4, 12, 8), datasource=datasource,
               description="Deployments per day, by strategy and how they ended."),
        _panel("timeseries", "Deploy duration (p90) by strategy",
               [("histogram_quantile(0.9, sum by (le, strategy)"
                 " (rate(orchestrate_deploy_duration_seconds_bucket[1d])))", "{{strategy}}")],
               unit="s", grid=(12, y + 4, 12, 8), datasource=datasource,
               description="How long deploy steps take, 90th percentile."),
        _panel("bargauge", "Share of pipeline time by step",
               [("sum by (step) (orchestrate_pipeline_step_seconds_total)"
                 " / scalar(sum(orchestrate_pipeline_step_seconds_total))", "{{step}}")],
               unit="percentunit", grid=(0, y + 12, 24, 8), datasource=datasource,
               description="Where the time of every run goes: the slowest steps first."),
    ]


def panel_exprs(panels: Iterable[dict[str, Any]]) -> list[str]:
    """Every PromQL expression of `panels` (for checks)."""
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]
