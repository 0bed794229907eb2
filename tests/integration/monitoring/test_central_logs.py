"""Central logs, log alerts and delivery figures on real local hosts.

One dev-like fleet for the module (2 app hosts, 1 monitoring host) with its monitoring deployed by
`orchestrate monitoring deploy`, so every host uploads its journal to the monitoring host. The tests
run in file order and tell one story:

1. only the fleet's certificates are admitted: no certificate, another CA's certificate and a
   certificate of the environment's CA naming no fleet host are refused; a host whose uploader is
   given another CA's certificate delivers nothing until it has its own back (and then loses nothing);
2. a release that panics at start fails its gate (exit 3); the evidence holds the panic line from
   the central log, and ServicePanicked fires in Prometheus on the monitoring host, quoting it;
3. after three deploys (one failed gate) and one rollback, `report --json` gives the counts and
   durations this test computes from `runs --json`, and Prometheus holds the same counts;
4. the central log of a host still returns its lines after the host is stopped, and after it is
   destroyed and gone from the inventory.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.monitoring.logs import EVIDENCE_FILE, CentralLogs, upload_source
from orchestrator.runs.identity import parse_time
from orchestrator.tools.cargo import find_cargo
from orchestrator.tools.process import run_command
from orchestrator.tools.x509 import KeyPair, issue, new_ca
from tests.support.cli import orchestrate
from tests.support.net import http_get

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "hello-service"
FRONT_PORT = 19532

FleetEnv = Any  # tests/integration/conftest.py


def cli(fleet: FleetEnv, *args: str) -> tuple[int, dict[str, Any], str]:
    """`orchestrate --project-dir P ARGS... --json`: (exit code, JSON, stderr)."""
    return orchestrate(fleet.project_dir, *args)


def wait_for(what: str, check: Any, timeout: float = 60.0, poll: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(poll)


def prometheus(fleet: FleetEnv, path: str, **params: str) -> Any:
    monitor = fleet.group("monitoring")[0]
    url = f"http://{fleet.network.assert_own_address(monitor.address)}:9090{path}"
    status, body = http_get(url + ("?" + urllib.parse.urlencode(params) if params else ""), network=fleet.network)
    assert status == 200, body
    return json.loads(body)["data"]


def central(fleet: FleetEnv) -> CentralLogs:
    return CentralLogs.of(fleet.loaded)


@pytest.fixture(scope="module")
def logs_fleet(module_unbooted_project: Any) -> Iterator[FleetEnv]:
    """The fleet, booted, with its monitoring (central logs included) deployed."""
    made = module_unbooted_project(env="dev", app_count=2, monitoring_count=1, lb_count=0)
    fleet, specs = fleet_for(made.loaded)
    made.hosts = specs
    fleet.ensure_all(specs)
    made.write_inventory()
    code, _, stderr = cli(made, "monitoring", "deploy", "dev")
    assert code == 0, stderr
    yield made


@pytest.fixture(scope="module")
def panic_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built with the `panic` feature: it panics right after binding its port."""
    project = tmp_path_factory.mktemp("panic") / "hello"
    project.mkdir()
    for name in ("Cargo.toml", "Cargo.lock", "src"):
        source = EXAMPLE / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / name)
    run_command([str(find_cargo()), "build", "--release", "--offline", "--features", "panic",
                 "--manifest-path", str(project / "Cargo.toml")], cwd=project, timeout=1200)
    return project / "target" / "release" / "hello-service"


def upload(fleet: FleetEnv, host: Any, marker: str, cert: str | None, key: str | None) -> str:
    """POST one journal entry from `host` to the monitoring host's receiver: the HTTP status, or
    `000 (curl exit N)` when TLS refused the connection."""
    monitor = fleet.group("monitoring")[0]
    entry = f"__REALTIME_TIMESTAMP={int(time.time() * 1e6)}\\nMESSAGE={marker}\\n\\n"
    auth = f"--cert {cert} --key {key}" if cert else ""
    command = (f"printf '{entry}' > /tmp/entry && curl -sS -o /dev/null -w '%{{http_code}}' "
               f"--cacert /etc/orchestrate/journal-upload/ca.pem {auth} -X POST "
               f"-H 'Content-Type: application/vnd.fdo.journal' --data-binary @/tmp/entry "
               f"https://{monitor.address}:{FRONT_PORT}/upload; echo \" (curl exit $?)\"")
    return fleet.ssh(host, command, check=False).stdout.strip()


def put_file(fleet: FleetEnv, host: Any, path: str, content: bytes, mode: str = "0600") -> None:
    run_command(fleet.ssh_argv(host, f"umask 077 && cat > {path} && chmod {mode} {path}"),
                input_text=content.decode(), timeout=30)


def env_ca(fleet: FleetEnv) -> KeyPair:
    """The environment's CA, as `monitoring deploy` made it on the controller."""
    pki = fleet.loaded.paths.pki
    return KeyPair((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())


def central_messages(fleet: FleetEnv, host: str, since: timedelta = timedelta(minutes=10)) -> list[str]:
    return [line.message for line in central(fleet).read(host, since=since)]


# --- 1. only the fleet's certificates are admitted ------------------------------------------------

def test_the_receiver_admits_only_the_fleets_certificates(logs_fleet: FleetEnv, tmp_path: Path) -> None:
    fleet = logs_fleet
    host = fleet.group("app")[0]
    forged = issue(new_ca("orchestrate dev logs CA"), host.name)  # the right names, another CA
    stranger = issue(env_ca(fleet), "intruder-1")  # the environment's CA, but no host of the fleet
    for name, pair in (("forged", forged), ("stranger", stranger)):
        put_file(fleet, host, f"/tmp/{name}.pem", pair.cert_pem, "0644")
        put_file(fleet, host, f"/tmp/{name}.key", pair.key_pem)
    tag = f"upload-check-{time.time_ns()}"
    results = {
        "none": upload(fleet, host, f"{tag} none", None, None),
        "forged": upload(fleet, host, f"{tag} forged", "/tmp/forged.pem", "/tmp/forged.key"),
        "stranger": upload(fleet, host, f"{tag} stranger", "/tmp/stranger.pem", "/tmp/stranger.key"),
        "own": upload(fleet, host, f"{tag} own", "/etc/orchestrate/journal-upload/client.pem",
                      "/etc/orchestrate/journal-upload/client.key"),
    }
    # TLS refuses the first two during the handshake; the front refuses a CN that is no fleet host
    assert results["none"].startswith("000") and results["forged"].startswith("000"), results
    assert results["stranger"].startswith("403"), results
    assert results["own"].startswith("202"), results
    messages = wait_for("the admitted entry in the central log",
                        lambda: [m for m in central_messages(fleet, host.name) if m.startswith(tag)])
    assert messages == [f"{tag} own"]


def test_an_uploader_with_another_cas_certificate_delivers_nothing(logs_fleet: FleetEnv) -> None:
    fleet = logs_fleet
    host = fleet.group("app")[1]
    forged = issue(new_ca("orchestrate dev logs CA"), host.name)
    fleet.ssh(host, "cp -a /etc/orchestrate/journal-upload /root/journal-upload.good")
    put_file(fleet, host, "/etc/orchestrate/journal-upload/client.pem", forged.cert_pem, "0644")
    put_file(fleet, host, "/etc/orchestrate/journal-upload/client.key", forged.key_pem)
    fleet.ssh(host, "systemctl restart systemd-journal-upload")
    marker = f"logged-while-forged-{time.time_ns()}"
    fleet.ssh(host, f"logger {marker}")
    # the uploader says why it cannot deliver; the marker never arrives
    wait_for("the uploader's TLS refusal", lambda: "SSL" in fleet.ssh(
        host, "journalctl -u systemd-journal-upload --no-pager -n 50", check=False).stdout, timeout=30)
    time.sleep(3)
    assert not [m for m in central_messages(fleet, host.name) if marker in m]
    # its own certificate back: the upload resumes where it stopped, the marker included
    fleet.ssh(host, "cp -a /root/journal-upload.good/. /etc/orchestrate/journal-upload/ "
                    "&& systemctl restart systemd-journal-upload")
    wait_for("the marker after the certificate came back",
             lambda: [m for m in central_messages(fleet, host.name) if marker in m], timeout=60)


# --- 2. a release that panics at start ----------------------------------------------------------

def test_a_panicking_release_fails_its_gate_with_the_panic_in_its_evidence_and_an_alert(
        logs_fleet: FleetEnv, hello_builds: Any, panic_build: Path) -> None:
    fleet = logs_fleet
    code, first, stderr = cli(fleet, "deploy", "dev", "--release", str(hello_builds.v1.binary))
    assert code == 0, stderr
    code, data, stderr = cli(fleet, "deploy", "dev", "--release", str(panic_build))
    assert code == 3, stderr
    evidence = Path(data["evidence_dir"])
    failed = [h["name"] for h in data["hosts"] if h["failed"]]
    assert failed, data
    for name in failed:
        text = (evidence / name / EVIDENCE_FILE).read_text()
        assert f"{name} " in text and "panicked at src/main.rs" in text, text[-2000:]
        assert "built with the panic feature" in text
    assert all(h["release"] == first["release"] and h["healthy"] for h in data["hosts"]), data["hosts"]

    def panic_alerts() -> list[dict[str, Any]]:
        alerts = prometheus(fleet, "/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "ServicePanicked" and a["state"] == "firing"
                and a["labels"]["host"] in failed]

    alerts = wait_for("ServicePanicked firing in Prometheus", panic_alerts, timeout=90)
    alert = alerts[0]
    assert alert["labels"]["unit"] == "hello.service"
    assert "panicked at src/main.rs" in alert["labels"]["line"]
    assert alert["labels"]["line"] in alert["annotations"]["description"]


# --- 3. the delivery report against the journal -----------------------------------------------------

def _deploy_step(run: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["name"] == "deploy")


def test_report_gives_what_the_journal_holds(logs_fleet: FleetEnv, hello_builds: Any) -> None:
    fleet = logs_fleet
    code, _, stderr = cli(fleet, "deploy", "dev", "--release", str(hello_builds.v2.binary))
    assert code == 0, stderr
    code, _, stderr = cli(fleet, "rollback", "dev")
    assert code == 0, stderr
    code, report, stderr = cli(fleet, "report", "dev", "--since", "1d")
    assert code == 0, stderr

    # the same figures, computed here from `runs --json` and each run's steps and host transitions
    code, listing, _ = cli(fleet, "runs", "dev", "--limit", "100")
    runs = sorted(listing["runs"], key=lambda r: r["started"])
    detail = {r["id"]: cli(fleet, "runs", "dev", r["id"])[1] for r in runs}
    deploys = [r for r in runs if r["command"] == "deploy"]
    rollbacks = [r for r in runs if r["command"] == "rollback" and r["state"] == "completed"]
    assert len(deploys) == 3 and len(rollbacks) == 1
    ok = [r for r in deploys if r["state"] == "completed"]
    gate = [r for r in deploys if r["exit_code"] == 3]
    assert (report["deploys"], report["succeeded"], report["gate_failed"]) == (3, len(ok), len(gate)) == (3, 2, 1)
    assert (report["rolled_back"], report["heal_rolled_back"], report["failed_changes"]) == (1, 0, 2)
    assert report["change_failure_rate"] == round(2 / 3, 3)

    steps = {r["id"]: _deploy_step(detail[r["id"]]["run"]) for r in deploys}
    durations = sorted(steps[r["id"]]["duration"] for r in deploys)
    assert report["deploy_duration"]["median"] == pytest.approx(durations[1], abs=0.002)
    assert report["deploy_duration"]["max"] == pytest.approx(durations[2], abs=0.002)
    lead = sorted((parse_time(steps[r["id"]]["finished"]) - parse_time(steps[r["id"]]["detail"]["built"])
                   ).total_seconds() for r in ok)
    assert report["lead_time"]["count"] == 2
    assert report["lead_time"]["max"] == pytest.approx(lead[1], abs=0.002)
    # time to restore: the failed gate (from the first failing host's staging to the run's end) and
    # the rollback of the last deploy (from its end to the rollback's end)
    moves = detail[gate[0]["id"]]["hosts"]
    failing = {m["host"] for m in moves if m["to"] == "failed"}
    staged = min(parse_time(m["at"]) for m in moves if m["host"] in failing and m["to"] == "staged")
    gate_restore = (parse_time(gate[0]["finished"]) - staged).total_seconds()
    rollback_restore = (parse_time(rollbacks[0]["finished"]) - parse_time(steps[ok[-1]["id"]]["finished"])
                        ).total_seconds()
    assert report["time_to_restore"]["count"] == 2
    assert report["time_to_restore"]["mean"] == pytest.approx((gate_restore + rollback_restore) / 2, abs=0.002)
    assert report["time_to_restore"]["max"] == pytest.approx(max(gate_restore, rollback_restore), abs=0.002)
    rolled = [d for d in report["deployments"] if d["rolled_back_by"]]
    assert [(d["run_id"], d["rollback_run"]) for d in rolled] == [(ok[-1]["id"], rollbacks[0]["id"])]
    assert [s["name"] for s in report["slowest_steps"]][:2] == ["deploy", "rollback"]
    assert report["by_strategy"][0]["strategy"] == "rolling" and report["by_strategy"][0]["deploys"] == 3

    # the same counts in Prometheus on the monitoring host (written after the rollback's run)
    def exported() -> dict[str, float]:
        counts = {}
        for name in ("orchestrate_deploys_total", "orchestrate_change_failures_total", "orchestrate_rollbacks_total"):
            result = prometheus(fleet, "/api/v1/query", query=f"sum({name})")["result"]
            counts[name] = float(result[0]["value"][1]) if result else -1.0
        return counts if counts["orchestrate_rollbacks_total"] == 1 else {}

    assert wait_for("the delivery metrics in Prometheus", exported, timeout=60) == {
        "orchestrate_deploys_total": 3.0, "orchestrate_change_failures_total": 2.0,
        "orchestrate_rollbacks_total": 1.0}


# --- 4. the logs of a host that is gone -----------------------------------------------------------

def test_a_hosts_central_log_outlives_the_host(logs_fleet: FleetEnv) -> None:
    fleet = logs_fleet
    host = fleet.group("app")[1]
    marker = f"last-words-{time.time_ns()}"
    fleet.ssh(host, f"logger {marker}")
    wait_for("the marker in the central log", lambda: [m for m in central_messages(fleet, host.name) if marker in m])
    local = fleet.fleet
    local.stop(host.name)
    assert local.state(host.name) == "stopped"
    lines = central(fleet).read(host.name, since=timedelta(minutes=5))
    assert any(marker in line.message for line in lines)
    assert all(line.host == host.name for line in lines)
    # destroyed and gone from the inventory: found by its name all the same
    local.destroy(host.name)
    fleet.hosts = [h for h in fleet.hosts if h.name != host.name]
    fleet.write_inventory()
    assert host.name not in fleet.inventory.read_text()
    again = central(fleet).read(host.name, since=datetime.now(UTC) - timedelta(minutes=5))
    assert any(marker in line.message for line in again)
    # a name that never uploaded has no lines (and is no error)
    assert central(fleet).read("never-there-1", since=timedelta(minutes=5)) == []
    # the other host's lines are its own
    other = fleet.group("app")[0]
    assert upload_source(other.name) != upload_source(host.name)
    assert not any(marker in line.message for line in central(fleet).read(other.name, since=timedelta(minutes=5)))
