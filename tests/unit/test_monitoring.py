"""Unit tests of orchestrator.monitoring: rules, their tests, routing cases, rendering, policy check."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.config.types import parse_duration
from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, write_inventory
from orchestrator.monitoring.checks import amtool_route_argv, check_heal_policy
from orchestrator.monitoring.files import (
    ALERTMANAGER_FILE,
    PROMETHEUS_FILE,
    MonitoringLayout,
    ensure_heal_token,
    heal_webhook_url,
    read_heal_token,
    render_monitoring,
    render_monitoring_texts,
)
from orchestrator.monitoring.rules import (
    RULES_FILE,
    RULES_TEST_FILE,
    alert_rules,
    format_duration,
    rate_window,
    route_cases,
    rules_test_document,
)

ENVS = ("dev", "staging", "prod")
HOSTS = [
    Host("dev-app-1", "10.213.10.10", ("app",)),
    Host("dev-app-2", "10.213.10.11", ("app",)),
    Host("dev-mon-1", "10.213.10.12", ("monitoring",)),
]


@pytest.fixture
def project(project_copy: Path) -> Project:
    return Project(project_copy)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (1, "1s"), (20, "20s"), (90, "1m30s"), (3600, "1h"), (3725, "1h2m5s")],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    if seconds:
        assert parse_duration(text) == seconds


@pytest.mark.parametrize("name", ENVS)
def test_every_rule_has_for_labels_and_annotations(project: Project, name: str) -> None:
    env = project.load(name).env
    rules = alert_rules(env)
    assert {r.name for r in rules} >= {"ServiceDown", "HealthFailing", "HighErrorRate", "HostUnreachable"}
    for rule in rules:
        assert rule.for_ == env.monitoring.alert_for
        labels = rule.labels(env)
        assert labels["remediation"] in {"restart", "rollback", "none"}
        assert labels["severity"] in {"critical", "warning"}
        annotations = rule.annotations()
        assert set(annotations) == {"summary", "description"}
        assert all(text.strip() for text in annotations.values())


def test_rate_window_covers_four_scrapes_and_at_least_20s(project: Project) -> None:
    assert rate_window(project.load("dev").env) == "20s"  # 1 s scrapes: the floor wins
    assert rate_window(project.load("prod").env) == "1m"  # 15 s scrapes: four of them


def test_error_rate_rule_uses_the_environment_threshold(project: Project) -> None:
    prod = {r.name: r for r in alert_rules(project.load("prod").env)}
    dev = {r.name: r for r in alert_rules(project.load("dev").env)}
    assert prod["HighErrorRate"].expr.endswith("> 0.02")
    assert dev["HighErrorRate"].expr.endswith("> 0.05")
    # the example's own counter and failure matchers (service.metrics of the shipped environments)
    assert 'rate(hello_requests_total{job="service",code=~"5.."}[1m])' in prod["HighErrorRate"].expr


@pytest.mark.parametrize("name", ENVS)
def test_rule_tests_cover_every_rule_firing_and_quiet(project: Project, name: str) -> None:
    env = project.load(name).env
    document = rules_test_document(env)
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in document["tests"]:
        for check in test["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
            for alert in check["exp_alerts"]:
                assert set(alert["exp_annotations"]) == {"summary", "description"}
                # exact text: no template placeholder may be left in an expectation
                assert "{{" not in "".join(alert["exp_annotations"].values())
    names = {r.name for r in alert_rules(env)}
    assert firing == names
    assert quiet == names


def test_rule_test_fires_only_after_for_and_the_window(project: Project) -> None:
    env = project.load("prod").env
    document = rules_test_document(env)
    eval_times = {parse_duration(c["eval_time"]) for t in document["tests"] for c in t["alert_rule_test"]
                  if c["exp_alerts"]}
    needed = parse_duration(env.monitoring.alert_for) + parse_duration(rate_window(env))
    assert min(eval_times) >= needed
    early = [t for t in document["tests"] if "waits for" in t["name"]]
    assert early and parse_duration(early[0]["alert_rule_test"][0]["eval_time"]) < parse_duration(
        env.monitoring.alert_for)


@pytest.mark.parametrize("name", ENVS)
def test_route_cases_send_remediable_alerts_to_heal(project: Project, name: str) -> None:
    env = project.load(name).env
    cases = {c.labels["alertname"]: c for c in route_cases(env)}
    assert cases["ServiceDown"].receiver == "heal"
    assert cases["HighErrorRate"].receiver == "heal"
    assert cases["HostUnreachable"].receiver == "default"
    assert cases["Watchdog"].receiver == "default"
    argv = amtool_route_argv(Path("/x/alertmanager.yml"), cases["ServiceDown"])
    assert argv[:4] == ["amtool", "config", "routes", "test"]
    assert "--verify.receivers=heal" in argv
    assert "remediation=restart" in argv


def test_prometheus_config_scrapes_every_app_host_and_node(project: Project) -> None:
    loaded = project.load("dev")
    texts = render_monitoring_texts(loaded, HOSTS)
    config = yaml.safe_load(texts[PROMETHEUS_FILE])
    assert config["global"]["scrape_interval"] == "1s"
    assert config["global"]["evaluation_interval"] == "500ms"
    assert config["global"]["external_labels"] == {"env": "dev"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    service_targets = {(sc["targets"][0], sc["labels"]["host"]) for sc in jobs["service"]["static_configs"]}
    assert service_targets == {("10.213.10.10:8080", "dev-app-1"), ("10.213.10.11:8080", "dev-app-2")}
    node_hosts = {sc["labels"]["host"] for sc in jobs["node"]["static_configs"]}
    assert node_hosts == {"dev-app-1", "dev-app-2", "dev-mon-1"}
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["127.0.0.1:9090"]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.rules.yml"]


def test_prometheus_config_scrapes_haproxy_on_every_lb_host(project: Project) -> None:
    hosts = [*HOSTS, Host("dev-lb-1", "10.213.10.13", ("lb",))]
    config = yaml.safe_load(render_monitoring_texts(project.load("dev"), hosts)[PROMETHEUS_FILE])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [(sc["targets"], sc["labels"]["host"]) for sc in jobs["haproxy"]["static_configs"]]
    assert targets == [(["10.213.10.13:8405"], "dev-lb-1")]
    # the LB host is a host like any other for the node exporter, not a service target
    assert "dev-lb-1" in {sc["labels"]["host"] for sc in jobs["node"]["static_configs"]}
    assert "dev-lb-1" not in {sc["labels"]["host"] for sc in jobs["service"]["static_configs"]}


def test_prometheus_config_without_hosts_has_empty_jobs(project: Project) -> None:
    config = yaml.safe_load(render_monitoring_texts(project.load("prod"), [])[PROMETHEUS_FILE])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["service"]["static_configs"] == []
    assert jobs["haproxy"]["static_configs"] == []
    # 15 s scrapes keep Prometheus' 10 s timeout; a timeout above the interval is rejected.
    assert config["global"]["scrape_timeout"] == "10s"


def test_alertmanager_config_routes_to_heal_with_token_file(project: Project) -> None:
    loaded = project.load("dev")
    text = render_monitoring_texts(loaded, HOSTS)[ALERTMANAGER_FILE]
    config = yaml.safe_load(text)
    route = config["route"]
    assert route["receiver"] == "default"
    assert route["group_wait"] == "0s" and route["group_interval"] == "500ms"
    assert route["routes"] == [{"receiver": "heal", "matchers": ['remediation=~"restart|rollback"']}]
    heal = next(r for r in config["receivers"] if r["name"] == "heal")
    hook = heal["webhook_configs"][0]
    assert hook["url"] == "http://10.213.10.1:9095/alerts"  # the controller on dev's bridge
    assert hook["http_config"]["authorization"] == {"type": "Bearer",
                                                    "credentials_file": "/etc/prometheus/heal.token"}
    token = ensure_heal_token(loaded)
    assert read_heal_token(token) not in text


def test_slower_environments_keep_alertmanager_batching(project: Project) -> None:
    config = yaml.safe_load(render_monitoring_texts(project.load("prod"), [])[ALERTMANAGER_FILE])
    assert config["route"]["group_wait"] == "15s"
    assert config["route"]["group_interval"] == "15s"
    assert config["route"]["repeat_interval"] == "10m"  # healing.throttle
    staging = yaml.safe_load(render_monitoring_texts(project.load("staging"), [])[ALERTMANAGER_FILE])["route"]
    assert (staging["group_wait"], staging["group_interval"]) == ("0s", "5s")


def test_dev_detects_a_dead_service_within_seconds(project: Project) -> None:
    """Dev's loop as rendered: a probe a second, rules evaluated every 500ms, `for: 1s` on every
    alert, Alertmanager sending a new group at once and a group's next alert within 500ms."""
    loaded = project.load("dev")
    texts = render_monitoring_texts(loaded, HOSTS)
    prometheus = yaml.safe_load(texts[PROMETHEUS_FILE])["global"]
    assert (prometheus["scrape_interval"], prometheus["scrape_timeout"]) == ("1s", "1s")
    assert prometheus["evaluation_interval"] == "500ms"
    groups = yaml.safe_load(texts[RULES_FILE])["groups"]
    assert {group["interval"] for group in groups} == {"500ms"}
    assert {rule["for"] for group in groups for rule in group["rules"]} == {"1s"}
    route = yaml.safe_load(texts[ALERTMANAGER_FILE])["route"]
    assert (route["group_wait"], route["group_interval"]) == ("0s", "500ms")
    # promtool checks that ServiceDown is still only pending half a second in
    tests = yaml.safe_load(texts[RULES_TEST_FILE])["tests"]
    early = [t["alert_rule_test"][0] for t in tests if "waits for" in t["name"]]
    assert early == [{"eval_time": "500ms", "alertname": "ServiceDown", "exp_alerts": []}]
    # from a kill to the firing evaluation: at most a probe interval (the next probe fails), an
    # evaluation interval (the next evaluation sees it) and `for`
    monitoring = loaded.env.monitoring
    worst = sum(parse_duration(d) for d in (monitoring.scrape_interval, monitoring.evaluation_interval,
                                            monitoring.alert_for))
    assert worst <= 2.5


@pytest.mark.parametrize("name", ENVS)
def test_rule_tests_check_a_single_failed_probe_does_not_fire(project: Project, name: str) -> None:
    env = project.load(name).env
    scrape = parse_duration(env.monitoring.scrape_interval)
    evaluation = parse_duration(env.monitoring.evaluation_interval)
    (test,) = [t for t in rules_test_document(env)["tests"] if "single failed probe" in t["name"]]
    status = next(s["values"] for s in test["input_series"] if s["series"].startswith("probe_http_status_code"))
    assert status.split(" ")[1] == "0" and status.count(" 0 ") == 1  # one failed probe among good ones
    failed_at = 4 * scrape  # after `200x3`: samples at 0, 1, 2 and 3 probe intervals
    (check,) = test["alert_rule_test"]
    at = parse_duration(check["eval_time"])
    # the last evaluation that still reads the failed probe: where a short `for` would fire
    assert failed_at <= at < failed_at + scrape and at + evaluation >= failed_at + scrape
    assert check["alertname"] == "ServiceDown" and check["exp_alerts"] == []


@pytest.mark.parametrize("name", ENVS)
def test_an_alert_needs_more_than_one_failed_probe(project: Project, name: str) -> None:
    """`for` spans at least one probe interval, so the probe that failed is followed by another
    before anything fires; and the probe has time: the blackbox exporter keeps 0.5 s of the scrape
    timeout for itself."""
    monitoring = project.load(name).env.monitoring
    assert parse_duration(monitoring.alert_for) >= parse_duration(monitoring.scrape_interval)
    timeout = yaml.safe_load(render_monitoring_texts(project.load(name), [])[PROMETHEUS_FILE])["global"][
        "scrape_timeout"]
    assert parse_duration(timeout) - 0.5 >= 0.5


def test_layout_overrides_addresses_and_paths(project: Project) -> None:
    layout = MonitoringLayout(config_dir="/tmp/m", alertmanager_address="127.0.0.1:19093", service_port=18080,
                              webhook_url="http://127.0.0.1:19095/alerts", token_file="/tmp/t")
    texts = render_monitoring_texts(project.load("dev"), HOSTS, layout)
    prometheus = yaml.safe_load(texts[PROMETHEUS_FILE])
    assert prometheus["rule_files"] == ["/tmp/m/rules/*.rules.yml"]
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    assert "10.213.10.10:18080" in texts[PROMETHEUS_FILE]
    hook = yaml.safe_load(texts[ALERTMANAGER_FILE])["receivers"][1]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:19095/alerts"
    assert hook["http_config"]["authorization"]["credentials_file"] == "/tmp/t"


def test_webhook_url_of_an_aws_environment_is_healing_listen(project: Project) -> None:
    assert heal_webhook_url(project.load("prod").env) == "http://127.0.0.1:9095/alerts"
    assert heal_webhook_url(project.load("staging").env) == "http://10.213.20.1:9096/alerts"


def test_render_writes_files_from_the_inventory(project: Project) -> None:
    loaded = project.load("dev")
    connection = ConnectionSettings(user="root", private_key=Path("/k"))
    write_inventory(loaded.state_dir / "inventory.yml", build_inventory("dev", HOSTS, connection))
    result = render_monitoring(loaded)
    assert result.app_targets == ["10.213.10.10:8080", "10.213.10.11:8080"]
    for name in (PROMETHEUS_FILE, ALERTMANAGER_FILE, RULES_FILE, RULES_TEST_FILE):
        assert (result.directory / name).is_file()
    rules = yaml.safe_load((result.directory / RULES_FILE).read_text())
    assert [r["alert"] for r in rules["groups"][0]["rules"]] == [r.name for r in alert_rules(loaded.env)]
    first = (result.directory / PROMETHEUS_FILE).stat().st_mtime_ns
    render_monitoring(loaded)  # unchanged content is not rewritten
    assert (result.directory / PROMETHEUS_FILE).stat().st_mtime_ns == first


def test_heal_token_is_private_and_generated_once(project: Project) -> None:
    loaded = project.load("dev")
    path = ensure_heal_token(loaded)
    token = read_heal_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_heal_token(ensure_heal_token(loaded)) == token


def test_heal_policy_check_passes_for_shipped_envs(project: Project) -> None:
    for name in ENVS:
        assert check_heal_policy(project.load(name)) == []


def test_heal_policy_check_names_a_missing_playbook(project: Project) -> None:
    (project.root / "playbooks" / "remediate-rollback.yml").unlink()
    problems = check_heal_policy(project.load("dev"))
    assert [p.rule for p in problems] == ["HighErrorRate"]
    assert "remediate-rollback.yml" in problems[0].message


def test_heal_policy_check_flags_a_throttle_shorter_than_for(project: Project) -> None:
    path = project.environment_path("dev")
    text = path.read_text().replace("alert_for: 1s", "alert_for: 1m").replace("throttle: 30s", "throttle: 2m")
    path.write_text(text)
    loaded = project.load("dev")
    assert check_heal_policy(loaded) == []
    # config validation refuses throttle < alert_for in the file; a policy built in code can
    # still get there, and the static check must say so.
    shorter = loaded.env.model_copy(update={"healing": loaded.env.healing.model_copy(update={"throttle": "30s"})})
    problems = check_heal_policy(type(loaded)(env=shorter, path=loaded.path, project_dir=loaded.project_dir,
                                              lines=loaded.lines))
    assert {p.rule for p in problems} == {r.name for r in alert_rules(shorter)}
    assert all("shorter than" in p.message for p in problems)


def test_heal_policy_check_flags_a_throttle_shorter_than_the_rate_window(project: Project) -> None:
    path = project.environment_path("dev")
    path.write_text(path.read_text().replace("throttle: 30s", "throttle: 15s"))
    problems = check_heal_policy(project.load("dev"))
    # the rate-based, remediable rules keep firing for a 20 s window after a fix
    assert {p.rule for p in problems} == {"HealthFailing", "HighErrorRate"}
    assert all("20s" in p.message for p in problems)
