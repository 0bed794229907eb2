"""Delivery figures from the run journal: how often releases ship, how long they take from build to
serving, how many fail and how long the fleet takes to recover (`orchestrate report ENV`).

Read from the journal only, so they describe every entry point alike (operators, cron, `up`, the
heal server). The definitions:

- A **deployment** is a run's `deploy` step (`orchestrate deploy`, or `up`'s deploy step) that
  ended, completed or failed, with a release (a release refused before any host was touched is
  none, and so is a step that found the release already serving: state `unchanged`). It ended
  `succeeded` (the release serves), `gate_failed` (exit 3: a health or traffic gate failed and
  every host went back) or `error` (anything else).
- A **rollback** is a completed `orchestrate rollback` run, or a `heal` run whose `rollback` step
  completed. It is charged to the latest succeeded deployment before it not rolled back yet.
- **Change failure rate**: deployments that ended `gate_failed` or were rolled back (by an operator
  or by the heal server), over all deployments.
- **Lead time**: from the release's build (`built`, recorded by the step that prepared it: the
  binary's modification time; the run's start when older runs lack it) to the end of the deploy
  step that made it serve.
- **Time to restore**: for a failed gate, from the moment the failing release went onto the first
  host that failed it (that host's last `staged` transition before its `failed` one: the switch
  follows at once) to the end of the run (every host back, healthy); for a rollback, from the end
  of the deploy that shipped the release to the end of the rollback.
- **Step shares**: every step of every run in the window, summed by step name, over their total.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from orchestrator.runs.identity import isoformat, parse_time, utcnow
from orchestrator.runs.journal import Journal
from orchestrator.runs.records import HostTransition, RunRecord

Result = Literal["succeeded", "gate_failed", "error"]


RollbackBy = Literal["operator", "heal"]


#: the strategies `deploy` and `up` record (what ran); the exported series exist for each from the start
STRATEGIES = ("rolling", "canary-hosts", "canary-traffic", "blue-green")


RESULTS: tuple[Result, ...] = ("succeeded", "gate_failed", "error")


#: exit code of a deploy whose gate failed and whose hosts all went back (orchestrator.errors.ExitStatus)
_GATE_FAILED_EXIT = 3


@dataclass(frozen=True)
class Deployment:
    """One deployment and what became of it."""

    run_id: str
    command: str
    strategy: str
    release: str | None
    started: datetime
    """When the deploy step started."""
    finished: datetime
    """When the deploy step ended: the release served from then on when it succeeded."""
    result: Result
    built: datetime | None
    rolled_back_by: RollbackBy | None = None
    rollback_run: str | None = None
    restored: datetime | None = None
    """When the fleet was healthy on the release before again (a failed gate or a rollback)."""
    failed_at: datetime | None = None
    """When the release that failed its gate went onto the first host that failed it."""

    @property
    def duration(self) -> float:
        return (self.finished - self.started).total_seconds()

    @property
    def failed_change(self) -> bool:
        return self.result == "gate_failed" or self.rolled_back_by is not None

    @property
    def lead_time(self) -> float | None:
        if self.result != "succeeded" or self.built is None:
            return None
        return max(0.0, (self.finished - self.built).total_seconds())

    @property
    def time_to_restore(self) -> float | None:
        if self.restored is None:
            return None
        start = self.failed_at if self.result == "gate_failed" else self.finished
        if start is None:
            return None
        return max(0.0, (self.restored - start).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "command": self.command, "strategy": self.strategy, "release": self.release,
            "started": isoformat(self.started), "finished": isoformat(self.finished), "result": self.result,
            "duration": round(self.duration, 3), "built": isoformat(self.built) if self.built else None,
            "lead_time": _round(self.lead_time), "failed_change": self.failed_change,
            "rolled_back_by": self.rolled_back_by, "rollback_run": self.rollback_run,
            "time_to_restore": _round(self.time_to_restore),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class Summary:
    """Figures of a set of durations in seconds (None when there are none)."""

    count: int
    median: float | None
    mean: float | None
    max: float | None

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Summary:
        found = [v for v in values if v is not None]
        if not found:
            return cls(0, None, None, None)
        return cls(len(found), statistics.median(found), statistics.fmean(found), max(found))

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "median": _round(self.median), "mean": _round(self.mean), "max": _round(self.max)}


@dataclass(frozen=True)
class Figures:
    """The delivery figures of a set of deployments (all of them, or one strategy's)."""

    strategy: str | None
    """None: every strategy."""
    deploys: int
    succeeded: int
    gate_failed: int
    errors: int
    rolled_back: int
    """Rolled back by an operator (`orchestrate rollback`)."""
    heal_rolled_back: int
    failed_changes: int
    change_failure_rate: float | None
    per_day: float
    lead_time: Summary
    time_to_restore: Summary
    duration: Summary

    @classmethod
    def of(cls, strategy: str | None, deployments: Sequence[Deployment], days: float) -> Figures:
        failed = sum(1 for d in deployments if d.failed_change)
        return cls(
            strategy=strategy,
            deploys=len(deployments),
            succeeded=sum(1 for d in deployments if d.result == "succeeded"),
            gate_failed=sum(1 for d in deployments if d.result == "gate_failed"),
            errors=sum(1 for d in deployments if d.result == "error"),
            rolled_back=sum(1 for d in deployments if d.rolled_back_by == "operator"),
            heal_rolled_back=sum(1 for d in deployments if d.rolled_back_by == "heal"),
            failed_changes=failed,
            change_failure_rate=failed / len(deployments) if deployments else None,
            per_day=len(deployments) / days if days > 0 else 0.0,
            lead_time=Summary.of(d.lead_time for d in deployments),
            time_to_restore=Summary.of(d.time_to_restore for d in deployments),
            duration=Summary.of(d.duration for d in deployments),
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {} if self.strategy is None else {"strategy": self.strategy}
        data.update(
            deploys=self.deploys, succeeded=self.succeeded, gate_failed=self.gate_failed, errors=self.errors,
            rolled_back=self.rolled_back, heal_rolled_back=self.heal_rolled_back,
            failed_changes=self.failed_changes, change_failure_rate=_round(self.change_failure_rate),
            deploys_per_day=round(self.per_day, 4), lead_time=self.lead_time.as_dict(),
            time_to_restore=self.time_to_restore.as_dict(), deploy_duration=self.duration.as_dict())
        return data


@dataclass(frozen=True)
class StepShare:
    """The time one step name took over the runs of the window."""

    name: str
    runs: int
    seconds: float
    mean: float
    max: float
    share: float
    """Of the total time of every step in the window."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runs": self.runs, "seconds": round(self.seconds, 3), "mean": round(self.mean, 3),
                "max": round(self.max, 3), "share": round(self.share, 4)}


@dataclass(frozen=True)
class DeliveryReport:
    """What `orchestrate report ENV` shows."""

    env: str
    since: datetime | None
    until: datetime
    days: float
    deployments: list[Deployment]
    overall: Figures
    by_strategy: list[Figures]
    steps: list[StepShare]
    step_seconds: float
    """Total time of every step of every run in the window."""
    runs: int
    """Runs in the window (every command)."""

    def slowest_steps(self, count: int = 5) -> list[StepShare]:
        return self.steps[:count]

    def as_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "since": isoformat(self.since) if self.since else None,
            "until": isoformat(self.until),
            "days": round(self.days, 4),
            "runs": self.runs,
            **self.overall.as_dict(),
            "by_strategy": [f.as_dict() for f in self.by_strategy],
            "slowest_steps": [s.as_dict() for s in self.slowest_steps()],
            "step_seconds": round(self.step_seconds, 3),
            "deployments": [d.as_dict() for d in self.deployments],
        }


def _time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(str(text))
    except ValueError:
        return None


def _deployment(run: RunRecord, transitions: Callable[[str], Sequence[HostTransition]]) -> Deployment | None:
    """The deployment `run` made, if its deploy step made one."""
    step = next((s for s in run.steps if s.name == "deploy"), None)
    if step is None or step.state not in ("completed", "failed") or step.started is None or step.finished is None:
        return None
    detail = step.detail or {}
    if detail.get("skipped"):
        return None
    release = detail.get("release") or (run.release if run.command == "up" else None)
    if not release:
        return None  # refused before any host was touched (a failed build, a bad path)
    if step.state == "completed" and detail.get("state") == "unchanged":
        return None
    if step.state == "completed":
        result: Result = "succeeded"
    elif run.exit_code == _GATE_FAILED_EXIT:
        result = "gate_failed"
    else:
        result = "error"
    build = next((s for s in run.steps if s.name == "build"), None)
    built = _time(detail.get("built")) or _time((build.detail or {}).get("built") if build else None) \
        or parse_time(run.started)
    finished = parse_time(step.finished)
    failed_at = restored = None
    if result == "gate_failed":
        failed_at = _failure_start(transitions(run.id))
        restored = _time(run.finished)
    return Deployment(run_id=run.id, command=run.command, strategy=str(detail.get("strategy") or "rolling"),
                      release=str(release), started=parse_time(step.started), finished=finished, result=result,
                      built=built, failed_at=failed_at, restored=restored)


def _failure_start(moves: Sequence[HostTransition]) -> datetime | None:
    """When the failing release went onto the first host that failed: per failing host its last
    `staged` move before its first `failed` one (the `failed` one itself when it has none)."""
    starts = []
    for host in {m.host for m in moves if m.to_state == "failed"}:
        mine = [m for m in moves if m.host == host]
        failed = next(index for index, m in enumerate(mine) if m.to_state == "failed")
        staged = [m for m in mine[:failed] if m.to_state == "staged"]
        starts.append(parse_time((staged[-1] if staged else mine[failed]).at))
    return min(starts) if starts else None


def _rollback_by(run: RunRecord) -> RollbackBy | None:
    """Who rolled back in `run`, when it is a completed rollback."""
    if run.command == "rollback" and run.state == "completed":
        return "operator"
    if run.command == "heal" and any(s.name == "rollback" and s.state == "completed" for s in run.steps):
        return "heal"
    return None


def deployments_of(runs: Sequence[RunRecord], transitions: Callable[[str], Sequence[HostTransition]]
                   ) -> list[Deployment]:
    """Every deployment of `runs` (any order), oldest first, with the rollbacks charged to them."""
    ordered = sorted(runs, key=lambda r: parse_time(r.started))
    found: list[Deployment] = []
    for run in ordered:
        made = _deployment(run, transitions)
        if made is not None:
            found.append(made)
            continue
        by = _rollback_by(run)
        if by is None or run.finished is None:
            continue
        started = parse_time(run.started)
        # the latest deployment that served before this rollback began and was not rolled back yet
        for index in range(len(found) - 1, -1, -1):
            candidate = found[index]
            if candidate.finished > started:
                continue
            if candidate.result == "succeeded" and candidate.rolled_back_by is None:
                found[index] = replace(candidate, rolled_back_by=by, rollback_run=run.id,
                                       restored=parse_time(run.finished))
                break
    return found


def step_shares(runs: Iterable[RunRecord]) -> tuple[list[StepShare], float]:
    """Time by step name over `runs`, longest total first, and the total of every step."""
    durations: dict[str, list[float]] = {}
    for run in runs:
        for step in run.steps:
            if step.duration is not None and step.state in ("completed", "failed"):
                durations.setdefault(step.name, []).append(step.duration)
    total = sum(sum(v) for v in durations.values())
    shares = [StepShare(name=name, runs=len(v), seconds=sum(v), mean=sum(v) / len(v), max=max(v),
                        share=sum(v) / total if total > 0 else 0.0)
              for name, v in durations.items()]
    shares.sort(key=lambda s: (-s.seconds, s.name))
    return shares, total


def compute_report(env: str, runs: Sequence[RunRecord], transitions: Callable[[str], Sequence[HostTransition]], *,
                   since: datetime | None, until: datetime | None = None) -> DeliveryReport:
    """The report over the runs started in [since, until] (pure given `transitions`).

    Rollbacks after a deployment are looked for among every run given, so a deployment at the
    start of the window is charged with a rollback in it.
    """
    until = until or utcnow()
    in_window = [r for r in runs if (since is None or parse_time(r.started) >= since)
                 and parse_time(r.started) <= until]
    deployments = [d for d in deployments_of(runs, transitions)
                   if (since is None or d.started >= since) and d.started <= until]
    if since is not None:
        days = (until - since).total_seconds() / 86400
    elif in_window:
        days = max((until - min(parse_time(r.started) for r in in_window)).total_seconds() / 86400, 1 / 1440)
    else:
        days = 0.0
    order = {name: index for index, name in enumerate(STRATEGIES)}
    strategies = sorted({d.strategy for d in deployments}, key=lambda s: (order.get(s, len(order)), s))
    shares, total = step_shares(in_window)
    return DeliveryReport(
        env=env, since=since, until=until, days=days, deployments=deployments,
        overall=Figures.of(None, deployments, days),
        by_strategy=[Figures.of(s, [d for d in deployments if d.strategy == s], days) for s in strategies],
        steps=shares, step_seconds=total, runs=len(in_window),
    )


def delivery_report(journal: Journal, *, since: datetime | timedelta | None = None,
                    until: datetime | None = None) -> DeliveryReport:
    """The delivery report of `journal`'s environment since `since` (a moment, or a span back from now)."""
    until = until or utcnow()
    if isinstance(since, timedelta):
        since = until - since
    runs = journal.runs(None, with_steps=True)
    cache: dict[str, list[HostTransition]] = {}

    def transitions(run_id: str) -> list[HostTransition]:
        if run_id not in cache:
            cache[run_id] = journal.host_transitions(run_id)
        return cache[run_id]

    return compute_report(journal.env, runs, transitions, since=since, until=until)


def by_strategy(deployments: Iterable[Deployment]) -> Mapping[str, list[Deployment]]:
    """Deployments grouped by strategy, every known strategy present (for series that always exist)."""
    grouped: dict[str, list[Deployment]] = {s: [] for s in STRATEGIES}
    for deployment in deployments:
        grouped.setdefault(deployment.strategy, []).append(deployment)
    return grouped
