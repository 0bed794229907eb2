"""What is true now, for the heal server's decision after the lock (orchestrator.models.heal.judge).

`JournalPresent` reads the facts `judge` needs:

- when an alert arrives, its host's *mark*: the id of the host's newest release move in the run
  journal (a transition to switched, verified, rolled_back or failed, in any run; 0 when none);
- after the lock: whether a run moved the host since (its newest move is not the mark), whether
  that move lies within the alert's window, whether the alert still fires (Prometheus' ALERTS on
  the monitoring host, asked only when the journal does not already make the alert stale), and
  for a rollback the journal's newest release-moving run (`last_release_run`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.types import parse_duration
from orchestrator.fleet.guard import address_check
from orchestrator.fleet.inventory import fleet_hosts
from orchestrator.heal.policy import Alert
from orchestrator.models.heal import LastRun, Present, RunKind
from orchestrator.monitoring.rules import alert_rules
from orchestrator.runs.identity import parse_time, utcnow
from orchestrator.runs.journal import JOURNAL_FILE, Journal
from orchestrator.runs.records import HostTransition, RunRecord
from orchestrator.runs.session import LockedRun
from orchestrator.tools.alertmanager import FiringSource, PrometheusAlerts
from orchestrator.traffic.gates import PROMETHEUS_PORT

#: host states that mean a run moved (or may have moved) the host's release
RELEASE_MOVES = ("switched", "verified", "rolled_back", "failed")


#: commands whose runs move releases (the heal server's own runs included)
RELEASE_COMMANDS = ("deploy", "up", "rollback", "restore", "heal")


#: how many of the newest runs are searched for the newest release-moving one
RUN_HORIZON = 200


def alert_windows(loaded: LoadedEnvironment) -> dict[str, float]:
    """Per alert name, the seconds after a release move during which the alert may still measure
    the release before it: the rule's rate window, its `for`, an evaluation and a scrape."""
    monitoring = loaded.env.monitoring
    delay = 2 * parse_duration(monitoring.evaluation_interval) + parse_duration(monitoring.scrape_interval)
    return {rule.name: parse_duration(rule.clears_in) + parse_duration(rule.for_) + delay
            for rule in alert_rules(loaded.env)}


def _moved(journal: Journal, run: RunRecord) -> bool:
    """Whether `run` moved any host's release (a run that changed nothing does not count)."""
    if run.command in ("deploy", "up") and run.state == "completed" and any(
            s.detail.get("state") == "unchanged" for s in run.steps):
        return False  # a deploy of what already served everywhere
    if any(t.to_state in RELEASE_MOVES for t in journal.host_transitions(run.id)):
        return True
    # a switch back of the traffic moves no host's release, but changes what serves
    return run.command != "up" and any(s.name in ("rollback", "restore") and s.state == "completed"
                                       for s in run.steps)


def last_release_run(journal: Journal, *, exclude: str | None = None) -> LastRun | None:
    """The journal's newest run that moved releases, and how it left the fleet (see models.heal)."""
    for run in journal.runs(RUN_HORIZON, with_steps=True):
        if run.id == exclude or run.command not in RELEASE_COMMANDS:
            continue
        if run.state in ("running", "interrupted"):
            return LastRun(run.id, run.command, RunKind.UNFINISHED, run.release)
        if not _moved(journal, run):
            continue
        if run.command in ("deploy", "up"):
            if run.state == "completed":
                return LastRun(run.id, run.command, RunKind.FORWARD, run.release)
            if run.exit_code == 3:  # the gate failed and every host is back on its previous release
                return LastRun(run.id, run.command, RunKind.BACKWARD, None)
            return LastRun(run.id, run.command, RunKind.UNFINISHED, run.release)
        kind = RunKind.BACKWARD if run.state == "completed" else RunKind.UNFINISHED
        return LastRun(run.id, run.command, kind, run.release)
    return None


class JournalPresent:
    """The heal server's PresentCheck: the environment's journal, and Prometheus for firing alerts."""

    def __init__(self, state_dir: Path, *, env: str, windows: Mapping[str, float],
                 firing: Callable[[], FiringSource | None], clock: Callable[[], datetime] = utcnow) -> None:
        self.state_dir = state_dir
        self.env = env
        self.windows = dict(windows)
        self.source = firing
        """Where to ask whether an alert fires, looked up at each question (the monitoring host
        may be provisioned after the server started)."""
        self.clock = clock
        self._journal: Journal | None = None
        self._mutex = threading.Lock()

    @classmethod
    def for_env(cls, loaded: LoadedEnvironment) -> JournalPresent:
        """The facts of `loaded`: its journal, and Prometheus on its monitoring host when it has one."""
        return cls(loaded.state_dir, env=loaded.name, windows=alert_windows(loaded),
                   firing=lambda: prometheus_of(loaded))

    def _open(self) -> Journal | None:
        with self._mutex:
            if self._journal is None and (self.state_dir / JOURNAL_FILE).exists():
                self._journal = Journal.open(self.state_dir, env=self.env)
            return self._journal

    def close(self) -> None:
        """Close the journal connection (the heal server's stop)."""
        with self._mutex:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    @staticmethod
    def _latest_move(journal: Journal | None, host: str) -> HostTransition | None:
        if journal is None or not host:
            return None
        return journal.latest_moves(RELEASE_MOVES).get(host)

    def mark(self, alert: Alert) -> int:
        """The id of the alert's host's newest release move now (0: none)."""
        move = self._latest_move(self._open(), alert.host)
        return move.id if move is not None else 0

    def facts(self, alert: Alert, action: str, mark: object, session: object) -> Present:
        """What is true now for `alert`, read inside the lock's `session` (its journal, its run)."""
        journal = session.journal if isinstance(session, LockedRun) else self._open()
        own_run = session.run.id if isinstance(session, LockedRun) else None
        move = self._latest_move(journal, alert.host)
        host_moved = None if not isinstance(mark, int) else (move.id if move is not None else 0) != mark
        window = self.windows.get(alert.name, 0.0)
        covers = False
        detail = ""
        if move is not None:
            ago = (self.clock() - parse_time(move.at)).total_seconds()
            covers = ago < window
            detail = (f"host {alert.host}: {move.to_state} by run {move.run_id} {ago:.0f} s ago; "
                      f"the alert's window is {window:g} s")
        last = last_release_run(journal, exclude=own_run) if action == "rollback" and journal is not None else None
        if host_moved is False and not covers:
            firing, asked = self._firing(alert)
            detail = "; ".join(x for x in (detail, asked) if x)
        else:
            firing = None  # stale by the journal already: no need to ask
        return Present(action=action, firing=firing, host_moved=host_moved, window_covers_move=covers,
                       last_run=last, detail=detail)

    def _firing(self, alert: Alert) -> tuple[bool | None, str]:
        labels = {"host": alert.host} if alert.host else {}
        try:
            source = self.source()
            if source is None:
                return None, "no monitoring host to ask"
            return source.firing(alert.name, labels), ""
        except Exception as exc:  # unreachable, timed out, answered nonsense: not confirmed
            return None, str(exc)


def prometheus_of(loaded: LoadedEnvironment) -> FiringSource | None:
    """Prometheus on the environment's monitoring host (the first of group monitoring), if any."""
    if not loaded.paths.inventory.exists():
        return None
    hosts = [h for h in fleet_hosts(loaded) if "monitoring" in h.groups]
    if not hosts:
        return None
    address = address_check(loaded)(hosts[0].address)
    shown = f"[{address}]" if ":" in address else address
    return PrometheusAlerts(f"http://{shown}:{PROMETHEUS_PORT}")
