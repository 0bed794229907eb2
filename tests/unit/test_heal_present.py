"""Deciding on the present: orchestrator.models.heal.judge, the facts read from a real run journal
(orchestrator.heal.present), and the clients that ask whether an alert still fires."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from orchestrator.config.loader import Project
from orchestrator.heal.policy import Alert
from orchestrator.heal.present import JournalPresent, alert_windows, last_release_run
from orchestrator.models.heal import Drop, LastRun, Present, RunKind, judge
from orchestrator.runs.identity import parse_time
from orchestrator.runs.journal import Journal
from orchestrator.tools.alertmanager import Alertmanager, AlertQueryError, PrometheusAlerts, alerts_promql

V1, V2, V3 = "0.1.0-aaaaaaaaaaaa", "0.2.0-bbbbbbbbbbbb", "0.3.0-cccccccccccc"
HOSTS = ("dev-app-1", "dev-app-2")


# --- judge ----------------------------------------------------------------------------------------


def fresh(action: str = "rollback", last: LastRun | None = None) -> Present:
    return Present(action=action, firing=True, host_moved=False, window_covers_move=False, last_run=last)


@pytest.mark.parametrize(("present", "drop"), [
    (Present("restart", firing=False, host_moved=False, window_covers_move=False), Drop.RESOLVED),
    (Present("restart", firing=None, host_moved=False, window_covers_move=False), Drop.UNCONFIRMED),
    (Present("restart", firing=True, host_moved=None, window_covers_move=False), Drop.UNCONFIRMED),
    (Present("restart", firing=True, host_moved=True, window_covers_move=False), Drop.HOST_MOVED),
    (Present("restart", firing=None, host_moved=False, window_covers_move=True), Drop.WINDOW),
    (fresh(last=None), Drop.NOTHING_TO_UNDO),
    (fresh(last=LastRun("r3", "deploy", RunKind.BACKWARD)), Drop.FLOOR),
    (fresh(last=LastRun("r3", "heal", RunKind.BACKWARD, V2)), Drop.FLOOR),
    (fresh(last=LastRun("r3", "deploy", RunKind.UNFINISHED, V3)), Drop.UNFINISHED_RUN),
])
def test_judge_drops(present: Present, drop: Drop) -> None:
    verdict = judge(present)
    assert verdict is not None and verdict[0] is drop and verdict[1]


def test_judge_acts_on_a_fresh_alert() -> None:
    assert judge(fresh("restart")) is None
    assert judge(fresh(last=LastRun("r2", "deploy", RunKind.FORWARD, V2))) is None


def test_the_floor_message_names_the_run_and_release() -> None:
    verdict = judge(fresh(last=LastRun("20261201T000000-ab12", "rollback", RunKind.BACKWARD, V2)))
    assert verdict is not None
    assert "20261201T000000-ab12" in verdict[1] and V2 in verdict[1] and "go past" in verdict[1]


# --- the journal's newest release-moving run ------------------------------------------------------


def deploy(journal: Journal, release: str, outcome: str = "completed", *, command: str = "deploy",
           hosts: tuple[str, ...] = HOSTS, state: str = "deployed") -> str:
    """A deploy run as the release service records it: completed, gate-failed (exit 3, every host
    restored), failed (exit 1, nothing touched) or interrupted."""
    run = journal.start_run(command, [command, "dev"], steps=["deploy"])
    with contextlib.suppress(RuntimeError), run.step("deploy") as step:
        step.update(release=release, state=state)
        if outcome == "failed":
            raise RuntimeError("cargo build failed")
        for host in hosts:
            for to in ("backed_up", "staged", "switched"):
                run.host_transition(host, to, release=release)
            run.host_transition(host, "verified" if outcome != "gate-failed" else "failed", release=release)
        if outcome == "gate-failed":
            for host in hosts:
                run.host_transition(host, "rolled_back", release=release)
            raise RuntimeError("health gate failed")
        run.set_release(release)
        if outcome == "interrupted":
            run.interrupt("SIGKILL")
            return run.id
    if outcome == "completed":
        run.complete()
    else:
        run.fail("failed", exit_code=3 if outcome == "gate-failed" else 1)
    return run.id


def heal(journal: Journal, *, ran: bool, hosts: tuple[str, ...] = ()) -> str:
    """A heal run: a rollback remediation that ran (moving `hosts`, or switching traffic back when
    none) or one dropped after the lock (its step skipped)."""
    run = journal.start_run("heal", ["heal", "rollback", "dev"], steps=["rollback"])
    if ran:
        with run.step("rollback"):
            for host in hosts:
                run.host_transition(host, "rolled_back", release=V1)
        run.set_release(V1)
    else:
        run.skip("rollback", "no remediation ran")
    run.complete()
    return run.id


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path, env="dev") as opened:
        yield opened


def test_a_completed_deploy_may_be_undone(journal: Journal) -> None:
    deploy(journal, V1)
    second = deploy(journal, V2)
    assert last_release_run(journal) == LastRun(second, "deploy", RunKind.FORWARD, V2)


def test_a_gate_failure_that_restored_the_hosts_is_the_floor(journal: Journal) -> None:
    deploy(journal, V2)
    failed = deploy(journal, V3, "gate-failed")
    assert last_release_run(journal) == LastRun(failed, "deploy", RunKind.BACKWARD, None)


def test_an_interrupted_run_leaves_the_fleet_to_the_operator(journal: Journal) -> None:
    deploy(journal, V2)
    interrupted = deploy(journal, V3, "interrupted", command="up")
    last = last_release_run(journal)
    assert last is not None and (last.id, last.kind) == (interrupted, RunKind.UNFINISHED)


def test_runs_that_moved_nothing_are_passed_over(journal: Journal) -> None:
    forward = deploy(journal, V2)
    deploy(journal, V3, "failed")  # did not build: no host touched
    deploy(journal, V2, command="up", state="unchanged")  # deployed what already served
    heal(journal, ran=False)  # a remediation dropped after the lock
    backup = journal.start_run("backup", ["backup", "dev"])
    backup.complete()
    assert last_release_run(journal) == LastRun(forward, "deploy", RunKind.FORWARD, V2)


def test_a_remediation_that_ran_is_the_floor(journal: Journal) -> None:
    deploy(journal, V2)
    switched_back = heal(journal, ran=True)  # a switch back of the traffic: no host transitions
    assert last_release_run(journal) == LastRun(switched_back, "heal", RunKind.BACKWARD, V1)
    rolled = heal(journal, ran=True, hosts=HOSTS)
    assert last_release_run(journal) == LastRun(rolled, "heal", RunKind.BACKWARD, V1)


def test_the_heal_servers_own_run_is_not_counted(journal: Journal) -> None:
    forward = deploy(journal, V2)
    own = journal.start_run("heal", ["heal", "rollback", "dev"], steps=["rollback"])
    assert last_release_run(journal, exclude=own.id) == LastRun(forward, "deploy", RunKind.FORWARD, V2)
    assert last_release_run(journal) is not None and last_release_run(journal).kind is RunKind.UNFINISHED  # type: ignore[union-attr]


def test_no_release_in_the_journal(journal: Journal) -> None:
    assert last_release_run(journal) is None


# --- JournalPresent --------------------------------------------------------------------------------


@dataclass
class FakeSource:
    answer: bool | Exception = True
    asked: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def firing(self, alertname: str, labels: Mapping[str, str]) -> bool:
        self.asked.append((alertname, dict(labels)))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def high_error_rate(host: str = "dev-app-1") -> Alert:
    return Alert(name="HighErrorRate", status="firing", labels={"alertname": "HighErrorRate", "host": host})


def present_for(tmp_path: Path, source: FakeSource, at: list[datetime]) -> JournalPresent:
    return JournalPresent(tmp_path, env="dev", windows={"HighErrorRate": 25.0}, firing=lambda: source,
                          clock=lambda: at[0])


def last_move_at(journal: Journal, host: str = "dev-app-1") -> datetime:
    return parse_time(journal.latest_moves(("verified", "rolled_back", "failed", "switched"))[host].at)


def test_an_alert_from_before_a_restore_is_stale(tmp_path: Path) -> None:
    """The reported sequence: HighErrorRate arrives during a deploy whose gate then fails."""
    source = FakeSource()
    now = [datetime.now().astimezone()]
    present = present_for(tmp_path, source, now)
    with Journal.open(tmp_path, env="dev") as journal:
        deploy(journal, V2)
        now[0] = last_move_at(journal) + timedelta(minutes=10)
        mark = present.mark(high_error_rate())  # the deploy of v3 is running: v2 still serves
        deploy(journal, V3, "gate-failed")
        now[0] = last_move_at(journal) + timedelta(seconds=2)
    facts = present.facts(high_error_rate(), "rollback", mark, None)
    assert (facts.host_moved, facts.window_covers_move, facts.firing) == (True, True, None)
    assert judge(facts) is not None and judge(facts)[0] is Drop.HOST_MOVED  # type: ignore[index]
    assert "rolled_back by run" in facts.detail
    assert source.asked == []  # stale by the journal: Prometheus was not asked
    # an alert that arrived after the restore is still inside the window of the move...
    mark = present.mark(high_error_rate())
    facts = present.facts(high_error_rate(), "rollback", mark, None)
    assert judge(facts) is not None and judge(facts)[0] is Drop.WINDOW  # type: ignore[index]
    # ...and once the window passed, the floor holds: the restore pinned v2
    now[0] += timedelta(seconds=60)
    facts = present.facts(high_error_rate(), "rollback", mark, None)
    assert facts.firing is True and source.asked == [("HighErrorRate", {"host": "dev-app-1"})]
    assert judge(facts) is not None and judge(facts)[0] is Drop.FLOOR  # type: ignore[index]
    present.close()


def test_a_fresh_alert_about_a_completed_deploy_is_acted_on(tmp_path: Path) -> None:
    source = FakeSource()
    now = [datetime.now().astimezone()]
    present = present_for(tmp_path, source, now)
    with Journal.open(tmp_path, env="dev") as journal:
        deploy(journal, V1)
        deploy(journal, V2)
        now[0] = last_move_at(journal) + timedelta(seconds=40)
    mark = present.mark(high_error_rate())
    facts = present.facts(high_error_rate(), "rollback", mark, None)
    assert judge(facts) is None
    source.answer = False
    assert judge(present.facts(high_error_rate(), "rollback", mark, None))[0] is Drop.RESOLVED  # type: ignore[index]
    source.answer = AlertQueryError("GET http://10.0.0.5:9090/api/v1/query: timed out")
    facts = present.facts(high_error_rate(), "rollback", mark, None)
    assert facts.firing is None and "timed out" in facts.detail
    present.close()


def test_no_journal_yet(tmp_path: Path) -> None:
    source = FakeSource()
    present = present_for(tmp_path, source, [datetime.now().astimezone()])
    assert present.mark(high_error_rate()) == 0
    facts = present.facts(high_error_rate(), "restart", 0, None)
    assert (facts.host_moved, facts.window_covers_move, facts.firing) == (False, False, True)
    assert judge(facts) is None
    assert present.facts(high_error_rate(), "restart", None, None).host_moved is None  # not marked on arrival


def test_alert_windows_cover_rate_window_for_and_delays(project_copy: Path) -> None:
    windows = alert_windows(Project(project_copy).load("dev"))
    # dev: rate window 20 s, for 1 s, evaluation 500ms (twice), scrape 1 s
    assert windows == {"ServiceDown": 3.0, "HealthFailing": 23.0, "HighErrorRate": 23.0, "HostUnreachable": 3.0}


# --- asking whether an alert fires ----------------------------------------------------------------


def test_queries_are_exact_matches() -> None:
    assert alerts_promql("HighErrorRate", {"host": 'we"ird\\'}) == (
        'ALERTS{alertname="HighErrorRate",host="we\\"ird\\\\",alertstate="firing"}')
    url = Alertmanager("http://10.0.0.5:9093/").url("ServiceDown", {"host": "dev-app-1"})
    query = parse_qs(urlsplit(url).query)
    assert urlsplit(url).path == "/api/v2/alerts"
    assert query["filter"] == ['alertname="ServiceDown"', 'host="dev-app-1"']
    assert query["active"] == ["true"] and query["silenced"] == ["false"] and query["inhibited"] == ["false"]


@contextlib.contextmanager
def stub(answers: dict[str, Any]) -> Iterator[str]:
    """An HTTP server answering each path with the JSON in `answers` (or 500)."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            body = json.dumps(answers[path]).encode() if path in answers else b"{}"
            self.send_response(200 if path in answers else 500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_alertmanager_and_prometheus_answers() -> None:
    active = [{"labels": {"alertname": "HighErrorRate"}, "status": {"state": "active"}}]
    series = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]}}
    with stub({"/api/v2/alerts": active, "/api/v1/query": series}) as base:
        assert Alertmanager(base).firing("HighErrorRate", {"host": "h"}) is True
        assert PrometheusAlerts(base).firing("HighErrorRate", {"host": "h"}) is True
    with stub({"/api/v2/alerts": [], "/api/v1/query": {"status": "success", "data": {"result": []}}}) as base:
        assert Alertmanager(base).firing("HighErrorRate", {}) is False
        assert PrometheusAlerts(base).firing("HighErrorRate", {}) is False
    with stub({}) as base:
        with pytest.raises(AlertQueryError, match="HTTP 500"):
            PrometheusAlerts(base).firing("X", {})
        with pytest.raises(AlertQueryError, match="HTTP 500"):
            Alertmanager(base).firing("X", {})
