"""Pure logic of traffic releases: colours, weight splits, gates, helper and ssh argv, config fields."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.errors import ConfigError, UsageError
from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, write_inventory
from orchestrator.monitoring.rules import ErrorCounters
from orchestrator.release.strategies import host_strategy, note_host_deploy, pick_strategy, resolve_strategy
from orchestrator.tools.prometheus import PrometheusAPI, PrometheusError
from orchestrator.traffic.gates import (
    _prometheus_decision,
    load_gate,
    monitoring_host,
    prometheus_gate,
    prometheus_queries,
    promql_servers,
    service_queries,
    stat_gate,
)
from orchestrator.traffic.lb import check_split, has_lb_host
from orchestrator.traffic.loadgen import LoadReport, Sample
from orchestrator.traffic.state import (
    TrafficState,
    colors,
    from_runtime,
    read_state,
    served_share,
    split_weights,
    write_state,
)
from tests.support.project import load_file_module

REPO = Path(__file__).resolve().parents[2]


def _hosts(n: int) -> list[Host]:
    return [Host(name=f"p-app-{i}", address=f"10.0.0.{10 + i}", groups=("app",)) for i in range(1, n + 1)]


def test_colours_alternate_by_name_order() -> None:
    found = colors(list(reversed(_hosts(3))))
    assert [h.name for h in found["blue"]] == ["p-app-1", "p-app-3"]
    assert [h.name for h in found["green"]] == ["p-app-2"]


@pytest.mark.parametrize("n_new,n_old", [(1, 2), (2, 1), (1, 1), (3, 5), (32, 32)])
@pytest.mark.parametrize("percent", [0, 1, 10, 25, 50, 75, 99, 100])
def test_split_weights_give_the_new_colour_its_share(n_new: int, n_old: int, percent: int) -> None:
    new = [f"n{i}" for i in range(n_new)]
    old = [f"o{i}" for i in range(n_old)]
    weights = split_weights(new, old, percent)
    assert all(0 <= w <= 256 for w in weights.values())
    assert served_share(weights, new) == pytest.approx(percent / 100, abs=0.01)
    if 0 < percent < 100:
        assert all(weights[n] > 0 for n in new + old)


def test_split_weights_refuses_bad_input() -> None:
    with pytest.raises(UsageError):
        split_weights(["a"], ["b"], 101)
    with pytest.raises(UsageError):
        split_weights([], ["b"], 10)


def _server(**counters: int) -> dict[str, int]:
    return {"hrsp_2xx": 0, "hrsp_5xx": 0, "eresp": 0, "econ": 0, "rtime": 0, **counters}


def test_stat_gate_measures_only_the_new_colour_over_the_step() -> None:
    before = {"a": _server(hrsp_2xx=100, hrsp_5xx=50), "b": _server(hrsp_2xx=1000)}
    after = {"a": _server(hrsp_2xx=107, hrsp_5xx=53, rtime=4), "b": _server(hrsp_2xx=2000, hrsp_5xx=900)}
    decision = stat_gate(10, before, after, ["a"], max_error_ratio=0.05, max_latency_ms=500)
    assert (decision.requests, decision.failed) == (10, 3)
    assert decision.error_ratio == pytest.approx(0.3)
    assert not decision.go and "error ratio" in decision.reason
    good = stat_gate(10, before, {**after, "a": _server(hrsp_2xx=120, hrsp_5xx=50, rtime=4)}, ["a"],
                     max_error_ratio=0.05, max_latency_ms=500)
    assert good.go and good.requests == 20 and good.latency_ms == pytest.approx(4)


def test_stat_gate_refuses_without_traffic_and_on_latency() -> None:
    state = {"a": _server(hrsp_2xx=5)}
    idle = stat_gate(25, state, state, ["a"], max_error_ratio=0.05, max_latency_ms=500)
    assert not idle.go and "no traffic" in idle.reason
    slow = stat_gate(25, state, {"a": _server(hrsp_2xx=25, rtime=900)}, ["a"], max_error_ratio=0.05,
                     max_latency_ms=500)
    assert not slow.go and "latency" in slow.reason


def test_stat_gate_counts_connection_errors_as_failures() -> None:
    before = {"a": _server()}
    after = {"a": _server(hrsp_2xx=8, econ=2)}
    decision = stat_gate(10, before, after, ["a"], max_error_ratio=0.05, max_latency_ms=500)
    assert (decision.requests, decision.failed, decision.go) == (10, 2, False)


def test_load_gate_uses_the_smoke_load() -> None:
    ok = LoadReport(url="x", samples=[Sample(started=0, status=200, latency=0.002) for _ in range(40)])
    assert load_gate(0, ok, max_error_ratio=0.01, max_latency_ms=500).go
    bad = LoadReport(url="x", samples=[Sample(started=0, status=500 if i % 3 == 0 else 200, latency=0.002)
                                       for i in range(40)])
    decision = load_gate(0, bad, max_error_ratio=0.01, max_latency_ms=500)
    assert not decision.go and decision.failed == 14 and decision.source == "smoke load"
    assert not load_gate(0, LoadReport(url="x"), max_error_ratio=0.5, max_latency_ms=500).go


def test_promql_server_pattern_matches_exactly_the_names() -> None:
    names = ["p-app-3", "p-app-1", "p.app"]
    literal = promql_servers(names)
    # what Prometheus matches (fully anchored) once the PromQL string literal is read
    pattern = literal.replace("\\\\", "\\")
    assert all(re.fullmatch(pattern, n) for n in names)
    assert not any(re.fullmatch(pattern, n) for n in ("p-app-2", "p-app-10", "pxapp", "p-app-1-old"))


def test_prometheus_queries_select_the_backend_and_the_new_colour() -> None:
    queries = prometheus_queries("hello", ["p-app-2"], "4s")
    assert set(queries) == {"requests", "failed", "error_ratio", "latency_seconds"}
    selector = 'job="haproxy",proxy="hello",server=~"p-app-2"'
    assert all(selector in q for q in queries.values())
    assert 'code="5xx"}[4s]' in queries["failed"] and "code" not in queries["requests"]
    assert queries["error_ratio"] == f"({queries['failed']}) / ({queries['requests']})"
    assert "haproxy_server_response_time_average_seconds" in queries["latency_seconds"]


def test_prometheus_gate_decides_on_the_values_and_refuses_no_data() -> None:
    queries = prometheus_queries("hello", ["a"], "4s")
    limits: dict[str, Any] = {"max_error_ratio": 0.05, "max_latency_ms": 500}
    good = prometheus_gate(10, queries, {"requests": 19.6, "failed": 0.0, "error_ratio": 0.0,
                                         "latency_seconds": 0.002}, **limits)
    assert good.go and good.source == "prometheus" and good.requests == 20 and good.latency_ms == pytest.approx(2)
    assert good.as_dict()["queries"] == queries and good.as_dict()["values"]["requests"] == 19.6
    flaky = prometheus_gate(10, queries, {"requests": 20.0, "failed": 6.0, "error_ratio": 0.3,
                                          "latency_seconds": 0.002}, **limits)
    assert not flaky.go and flaky.failed == 6 and "error ratio 0.300" in flaky.reason
    slow = prometheus_gate(10, queries, {"requests": 20.0, "failed": 0.0, "error_ratio": 0.0,
                                         "latency_seconds": 0.9}, **limits)
    assert not slow.go and "latency" in slow.reason
    empty = prometheus_gate(10, queries, {"requests": None, "failed": None, "error_ratio": None,
                                          "latency_seconds": None}, **limits)
    assert not empty.go and "no data" in empty.reason
    assert not prometheus_gate(10, queries, {}, **limits).go
    idle = prometheus_gate(10, queries, {"requests": 0.0, "failed": 0.0, "error_ratio": 0.0,
                                         "latency_seconds": 0.0}, **limits)
    assert not idle.go and "no traffic" in idle.reason
    # the HAProxy-stats decisions keep their record without Prometheus fields
    assert "queries" not in stat_gate(10, {}, {}, ["a"], **limits).as_dict()


def test_blue_green_prometheus_gate_takes_the_latency_of_the_smoke_load() -> None:
    counters = ErrorCounters("service", "ledger_http_responses_total", 'job="service"', 'class="5xx"', "host, instance")
    queries = service_queries(counters, ["p-app-1"])
    assert set(queries) == {"requests", "failed", "error_ratio"}
    assert 'ledger_http_responses_total{job="service",host=~"p-app-1"}' in queries["requests"]
    assert 'ledger_http_responses_total{job="service",class="5xx",host=~"p-app-1"}' in queries["failed"]
    assert queries["failed"].endswith("or vector(0))")  # no 5xx series at all is a ratio of 0
    limits: dict[str, Any] = {"max_error_ratio": 0.05, "max_latency_ms": 500}
    good = prometheus_gate(0, queries, {"requests": 44.0, "failed": 0.0, "error_ratio": 0.0}, latency_ms=3.0,
                           **limits)
    assert good.go and good.latency_ms == pytest.approx(3.0) and good.source == "prometheus"
    slow = prometheus_gate(0, queries, {"requests": 44.0, "failed": 0.0, "error_ratio": 0.0}, latency_ms=900.0,
                           **limits)
    assert not slow.go and "latency" in slow.reason
    assert not prometheus_gate(0, queries, {}, latency_ms=3.0, **limits).go


def test_an_unreachable_prometheus_is_a_no_go_not_an_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prometheus = PrometheusAPI(f"http://127.0.0.1:{port}", name="p-mon-1", scrape_interval=0.1)
    with pytest.raises(PrometheusError, match="p-mon-1: Prometheus query failed"):
        prometheus.query("up")
    decision = _prometheus_decision(prometheus, "hello", 10, ["p-app-2"], time.time(),
                                    max_error_ratio=0.05, max_latency_ms=500)
    assert not decision.go and decision.source == "prometheus"
    assert decision.reason.startswith("Prometheus could not be asked") and decision.queries


def test_monitoring_host_needs_monitoring_enabled_and_a_host(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    assert monitoring_host(loaded) is None  # no inventory yet
    connection = ConnectionSettings(user="root", private_key=Path("/k"))
    hosts = [*_hosts(2), Host("p-lb-1", "10.0.0.20", ("lb",))]
    write_inventory(loaded.state_dir / "inventory.yml", build_inventory("dev", hosts, connection))
    assert monitoring_host(loaded) is None  # no host in group monitoring
    write_inventory(loaded.state_dir / "inventory.yml",
                    build_inventory("dev", [*hosts, Host("p-mon-1", "10.0.0.30", ("monitoring",))], connection))
    found = monitoring_host(loaded)
    assert found is not None and found.name == "p-mon-1"
    disabled = loaded.env.model_copy(update={"monitoring": loaded.env.monitoring.model_copy(update={"enabled": False})})
    assert monitoring_host(type(loaded)(env=disabled, path=loaded.path, project_dir=loaded.project_dir,
                                        lines=loaded.lines)) is None


def test_state_round_trip(tmp_path: Path, project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    assert read_state(loaded) == TrafficState()
    write_state(loaded, TrafficState(weights={"a": 0, "b": 100}, active="green", previous="blue",
                                     releases={"green": "0.2.0-0123456789ab"}))
    again = read_state(loaded)
    assert (again.weights, again.active, again.previous) == ({"a": 0, "b": 100}, "green", "blue")


def _env_with(project: Path, rollout: dict[str, Any]) -> Path:
    path = project / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(path.read_text())
    data["rollout"] = {**data.get("rollout", {}), **rollout}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_traffic_fields_defaults_and_validation(project_copy: Path) -> None:
    rollout = Project(project_copy).load("dev").env.rollout
    assert rollout.traffic_steps == [10, 25, 50, 75, 100]
    assert rollout.step_hold == "10s"
    _env_with(project_copy, {"traffic_steps": [50, 20, 100]})
    with pytest.raises(ConfigError, match="rising list of percentages ending at 100"):
        Project(project_copy).load("dev")
    _env_with(project_copy, {"traffic_steps": [20, 50], "step_hold": 3})
    with pytest.raises(ConfigError, match="traffic_steps"):
        Project(project_copy).load("dev")
    _env_with(project_copy, {"traffic_steps": [20, 100], "step_hold": 3})
    assert Project(project_copy).load("dev").env.rollout.step_hold == "3s"


def _helper() -> ModuleType:
    return load_file_module(REPO / "roles" / "haproxy" / "files" / "orchestrate-haproxy.py", "orchestrate_haproxy")


STATE_DUMP = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight ...\n"
              "3 hello 1 p-app-1 10.0.0.11 2 0 0 100 0 0 1 0 0 0 0 0 - 8080 - 0 0 - - 0\n")


def test_helper_saves_the_server_state_file_and_never_edits_the_config(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    helper = _helper()
    assert not hasattr(helper, "persist")  # the split is runtime state, not configuration
    monkeypatch.setattr(helper, "ask", lambda sock, command: STATE_DUMP if command == "show servers state" else "")
    state_file = tmp_path / "server-state"
    helper.save_state("/run/haproxy/admin.sock", str(state_file))
    assert state_file.read_text() == STATE_DUMP
    assert [p.name for p in tmp_path.iterdir()] == ["server-state"]  # written by rename, nothing left over
    monkeypatch.setattr(helper, "ask", lambda sock, command: "Unknown command.\n")
    with pytest.raises(SystemExit, match="haproxy answered no server state"):
        helper.save_state("/run/haproxy/admin.sock", str(state_file))
    assert state_file.read_text() == STATE_DUMP  # the last good state stays
    with pytest.raises(SystemExit, match=r"NAME=0\.\.256"):
        helper.parse_pairs("a=300")


def test_helper_expect_compares_the_configured_initial_weights(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    helper = _helper()
    running = {"p-app-1": {"weight": 0, "initial_weight": 100}, "p-app-2": {"weight": 100, "initial_weight": 100}}
    monkeypatch.setattr(helper, "state", lambda sock, backend: running)
    monkeypatch.setattr("sys.argv", ["orchestrate-haproxy", "expect", "--backend", "hello", "p-app-1=100,p-app-2=100"])
    assert helper.main() == 0  # a runtime weight of 0 (restored from the state file) is not a mismatch
    monkeypatch.setattr("sys.argv", ["orchestrate-haproxy", "expect", "--backend", "hello", "p-app-1=100"])
    assert helper.main() == 1
    assert "expected {'p-app-1': 100}" in capsys.readouterr().err


GROUPS: dict[Any, list[str]] = {"blue": ["a-1", "a-3"], "green": ["a-2", "a-4"]}


@pytest.mark.parametrize(("weights", "cached", "active", "previous"), [
    # after a blue-green release to green: HAProxy gives blue 0
    ({"a-1": 0, "a-2": 100, "a-3": 0, "a-4": 100}, TrafficState(), "green", "blue"),
    ({"a-1": 0, "a-2": 100, "a-3": 0, "a-4": 100}, TrafficState(active="green", previous="blue"), "green", "blue"),
    # the cache says a switch back already happened (nothing to return to): trusted, it agrees
    ({"a-1": 0, "a-2": 100, "a-3": 0, "a-4": 100}, TrafficState(active="green", previous=None), "green", None),
    # the cache disagrees with HAProxy (another controller switched): HAProxy wins
    ({"a-1": 100, "a-2": 0, "a-3": 100, "a-4": 0}, TrafficState(active="green", previous="blue"), "blue", "green"),
    # every host serves (no traffic release yet): blue, nothing to switch back to
    ({"a-1": 100, "a-2": 100, "a-3": 100, "a-4": 100}, TrafficState(), "blue", None),
    ({"a-1": 100, "a-2": 100, "a-3": 100, "a-4": 100}, TrafficState(active="green"), "green", None),
    # a canary stopped at 25%: the colour with the larger share serves
    ({"a-1": 3, "a-2": 1, "a-3": 3, "a-4": 1}, TrafficState(active="green"), "blue", None),
])
def test_the_split_comes_from_haproxy_and_the_history_from_the_cache(
        weights: dict[str, int], cached: TrafficState, active: str, previous: str | None) -> None:
    state = from_runtime(weights, GROUPS, replace(cached, releases={"blue": "v1"}))
    assert (state.active, state.previous) == (active, previous)
    assert state.weights == weights and state.releases == {"blue": "v1"}


def test_servers_unknown_to_the_colours_are_left_out_of_the_split() -> None:
    state = from_runtime({"a-1": 100, "a-2": 0, "old-9": 100}, {"blue": ["a-1"], "green": ["a-2"]}, TrafficState())
    assert state.weights == {"a-1": 100, "a-2": 0} and (state.active, state.previous) == ("blue", "green")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed on this machine")
def test_role_template_renders_a_config_haproxy_accepts(tmp_path: Path) -> None:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["comment"] = lambda text: f"# {text}"
    template = env.from_string((REPO / "roles/haproxy/templates/haproxy.cfg.j2").read_text())
    variables = yaml.safe_load((REPO / "roles/haproxy/defaults/main.yml").read_text())
    variables.update(ansible_managed="managed", haproxy_backend_name="hello",
                     haproxy_admin_socket=str(tmp_path / "admin.sock"),
                     haproxy_server_state_file=str(tmp_path / "server-state"),
                     haproxy_backends=[{"name": "p-app-1", "address": "127.0.0.1", "weight": 100},
                                       {"name": "p-app-2", "address": "127.0.0.1", "weight": 100}])
    config = tmp_path / "haproxy.cfg"
    config.write_text(template.render(**variables))
    text = config.read_text()
    assert "server p-app-2 127.0.0.1:8080 weight 100" in text
    # runtime weights come back from HAProxy's own state file at every start and reload
    assert f"server-state-file {tmp_path / 'server-state'}" in text and "load-server-state-from-file global" in text
    assert "expose-fd listeners" in text and "master-worker" in text
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    broken = tmp_path / "broken.cfg"
    broken.write_text(text.replace("balance roundrobin", "balance nosuchalgorithm"))
    assert subprocess.run(["haproxy", "-c", "-f", str(broken)], capture_output=True, check=False).returncode != 0


@pytest.mark.parametrize(("requested", "lb", "ran"), [
    ("canary", True, "canary-traffic"), ("canary", False, "canary-hosts"),
    ("canary-hosts", True, "canary-hosts"), ("canary-traffic", True, "canary-traffic"),
    ("blue-green", True, "blue-green"), ("rolling", True, "rolling"), ("rolling", False, "rolling"),
])
def test_canary_means_traffic_weight_behind_a_load_balancer(requested: str, lb: bool, ran: str) -> None:
    assert pick_strategy(requested, lb=lb) == ran
    assert host_strategy(pick_strategy(requested, lb=lb)) == ("canary" if ran == "canary-hosts" else "rolling")


def test_pick_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="not one of rolling, canary, canary-hosts, canary-traffic, blue-green"):
        pick_strategy("bluegreen", lb=True)


def test_resolve_strategy_reads_the_inventory_and_the_environment(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    connection = ConnectionSettings(user="root", private_key=Path("/k"))
    inventory = loaded.state_dir / "inventory.yml"
    assert not has_lb_host(loaded)  # no inventory yet
    write_inventory(inventory, build_inventory("dev", _hosts(2), connection))
    assert not has_lb_host(loaded)
    assert resolve_strategy(loaded, "canary") == "canary-hosts"
    assert resolve_strategy(loaded, None) == "rolling"  # dev's rollout.strategy
    with pytest.raises(UsageError, match=r"no host in group lb: set terraform\.vars\.lb_count: 1"):
        resolve_strategy(loaded, "blue-green")
    write_inventory(inventory, build_inventory("dev", [*_hosts(2), Host("p-lb-1", "10.0.0.20", ("lb",))], connection))
    assert has_lb_host(loaded)
    assert resolve_strategy(loaded, "canary") == "canary-traffic"
    _env_with(project_copy, {"strategy": "canary"})
    assert resolve_strategy(Project(project_copy).load("dev"), None) == "canary-traffic"
    _env_with(project_copy, {"strategy": "canary-hosts"})
    again = Project(project_copy).load("dev")
    assert resolve_strategy(again, None) == "canary-hosts" and again.env.rollout.host_strategy == "canary"
    for name in ("blue-green", "canary-traffic"):
        _env_with(project_copy, {"strategy": name})
        traffic = Project(project_copy).load("dev")
        assert resolve_strategy(traffic, None) == name
        # orchestrator.release.hosts (host level) deploys each colour of a traffic release as rolling
        assert traffic.env.rollout.host_strategy == "rolling"


def test_a_host_level_deploy_leaves_no_colour_to_switch_back_to(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    note_host_deploy(loaded, "0.3.0-0123456789ab")
    assert not (loaded.state_dir / "traffic.json").exists()  # no LB state: nothing written
    write_state(loaded, TrafficState(weights={"a": 0, "b": 100}, active="green", previous="blue",
                                     releases={"green": "0.2.0-0123456789ab"}))
    note_host_deploy(loaded, "0.3.0-0123456789ab")
    state = read_state(loaded)
    assert state.previous is None and state.weights == {"a": 0, "b": 100}
    assert state.releases == {"blue": "0.3.0-0123456789ab", "green": "0.3.0-0123456789ab"}


def test_check_split_after_blue_green_wants_the_serving_hosts_on_the_new_release() -> None:
    releases = {"a-1": "v2", "a-2": "v1", "a-3": "v2", "a-4": "v1"}
    weights = {"a-1": 100, "a-2": 0, "a-3": 100, "a-4": 0}
    problem, detail = check_split(releases, weights, "v2")
    assert problem is None
    assert detail == {"release": "v2", "serving": {"a-1": "v2", "a-3": "v2"}, "idle": {"a-2": "v1", "a-4": "v1"}}
    # the new release is on the idle hosts only: traffic never moved
    problem, _ = check_split(releases, {"a-1": 0, "a-2": 100, "a-3": 0, "a-4": 100}, "v2")
    assert problem == "the hosts that get traffic are on v1, expected v2"
    # a split colour, or an idle host without a release
    assert "idle hosts are on a-2: v1, a-4: v3" in str(check_split({**releases, "a-4": "v3"}, weights, "v2")[0])
    assert "a-4: no release" in str(check_split({**releases, "a-4": None}, weights, "v2")[0])
    assert check_split(releases, dict.fromkeys(weights, 0), None)[0] == (
        "no app host gets traffic from the load balancer (every weight is 0)")
    assert check_split(releases, {"a-1": 100}, None)[0] == "not in the load balancer's backend: a-2, a-3, a-4"
    # every host serves (a rolling deploy behind the LB): one release fleet-wide, as without an LB
    assert check_split(releases, dict.fromkeys(weights, 100), None)[0] == "the hosts that get traffic are on v1, v2"
    assert check_split(dict.fromkeys(releases, "v2"), dict.fromkeys(weights, 100), "v2")[0] is None


def test_up_configures_the_lb_between_deploy_and_monitoring() -> None:
    from orchestrator.pipeline.up import STEPS, _Stages

    assert STEPS.index("deploy") < STEPS.index("lb") < STEPS.index("monitoring")
    assert all(callable(getattr(_Stages, name)) for name in STEPS)
