"""The operator's day on real hosts: status, logs, exec, deploy --check and --limit, rollback
--limit, and the notifications of a deploy and of a failed gate.

One fleet of three app hosts is shared by the tests of this module; they run in file order and
each starts from what the previous one left, as an operator's environment would. Every check asks
the hosts (over HTTP from the controller, over SSH) or a webhook listener on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.release.probe import fleet_status
from orchestrator.runs.audit import AuditLog

FleetEnv = Any
Builds = Any
pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")
OVERRIDES = {"service": {"health": {"timeout": "3s", "interval": "100ms"}}}
FIELDS = {"event", "env", "release", "previous_release", "state", "run", "hosts", "user", "text"}


# --- helpers -----------------------------------------------------------------------------------


def run(fleet: FleetEnv, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`orchestrate --project-dir P ARGS...` as a script runs it (no terminal)."""
    env = dict(os.environ)
    password = fleet.project_dir / "inventories" / fleet.env_name / f".vault-password-{fleet.env_name}"
    if password.exists():
        env["ORCHESTRATE_VAULT_PASSWORD_FILE"] = str(password)
    return subprocess.run([ORCHESTRATE, "--project-dir", str(fleet.project_dir), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def app_names(fleet: FleetEnv) -> list[str]:
    return [h.name for h in fleet.group("app")]


def current_releases(fleet: FleetEnv) -> dict[str, str]:
    """Each app host's `current` release, read over SSH."""
    found = {}
    for host in fleet.group("app"):
        target = fleet.ssh(host, "readlink /opt/hello/current").stdout.strip()
        found[host.name] = target.rsplit("/", 1)[-1]
    return found


def versions(fleet: FleetEnv) -> dict[str, str]:
    found = {}
    for host in fleet.group("app"):
        status, body = fleet.http_get(host.address, "/version")
        assert status == 200, f"{host.name}: /version answered {status}"
        found[host.name] = json.loads(body)["version"]
    return found


def wait_healthy(fleet: FleetEnv, host: Any, limit: float = 60) -> None:
    """Until the service on `host` answers its health check (after a restart or a reboot)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if fleet.http_get(host.address, "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{host.name} not healthy after {limit:g} s")


class Listener:
    """A webhook receiver on 127.0.0.1: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/orchestrate"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [b["event"] for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the fleet ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    made = Listener()
    yield made
    made.close()


@pytest.fixture(scope="module")
def fleet(module_unbooted_project: Any, hello_builds: Builds, listener: Listener) -> FleetEnv:
    """Three app hosts on v1; notifications of deploys, rollbacks and failed gates go to `listener`."""
    made = module_unbooted_project(app_count=3, overrides={
        **OVERRIDES, "notify": {"webhooks": [{"url": listener.url, "events": ["deploy", "rollback", "gate_failed"]}]}})
    local, specs = fleet_for(made.loaded)
    made.hosts = specs
    local.ensure_all(specs)
    made.write_inventory()
    result = run(made, "deploy", "dev", "--release", str(hello_builds.v1.binary), "--skip-backup", "--json")
    assert result.returncode == 0, result.stderr
    return made


# --- status ---------------------------------------------------------------------------------------


def test_status_of_three_hosts_by_direct_probes(fleet: FleetEnv, hello_builds: Builds) -> None:
    # how fast is the `status` figure of the bench (bench/run.py), not an assertion here
    result = run(fleet, "status", "dev", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    v1 = hello_builds.v1.release_id
    assert data["env"] == "dev" and data["release"] == v1
    assert [h["name"] for h in data["hosts"]] == app_names(fleet)
    for host in data["hosts"]:
        assert {"name", "address", "release", "previous_release", "unit", "healthy"} <= set(host)
        assert (host["release"], host["unit"], host["healthy"]) == (v1, "active", True)
    # the probes in process give the same answer
    probed = fleet_status(fleet.loaded)
    assert [(h.name, h.release, h.healthy) for h in probed.hosts] == [
        (h["name"], h["release"], h["healthy"]) for h in data["hosts"]]
    # no playbook ran: no run folder was left behind
    runs = fleet.state_dir / "runs"
    before = sorted(p.name for p in runs.iterdir()) if runs.exists() else []
    run(fleet, "status", "dev", "--json")
    assert (sorted(p.name for p in runs.iterdir()) if runs.exists() else []) == before


def test_status_reports_a_stopped_unit(fleet: FleetEnv) -> None:
    host = fleet.group("app")[1]
    fleet.ssh(host, "systemctl stop hello.service")
    try:
        result = run(fleet, "status", "dev", "--json")
        assert result.returncode == 1
        row = next(h for h in json.loads(result.stdout)["hosts"] if h["name"] == host.name)
        assert row["unit"] in ("inactive", "failed") and row["healthy"] is False
    finally:
        fleet.ssh(host, "systemctl start hello.service")
        wait_healthy(fleet, host)


# --- logs -----------------------------------------------------------------------------------------


def test_logs_since_shows_every_app_host_prefixed(fleet: FleetEnv) -> None:
    for host in fleet.group("app"):
        fleet.http_get(host.address, f"/logs-probe-{host.name}")
    result = run(fleet, "logs", "dev", "--since", "5m")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in app_names(fleet):
        mine = [line for line in lines if line.startswith(name + " ")]
        assert mine, f"no line from {name}"
        assert any(f"/logs-probe-{name}" in line for line in mine)
    # every line starts with one of the hosts
    assert all(line.split(" ", 1)[0] in app_names(fleet) for line in lines)


def test_logs_json_is_one_object_per_line_merged_by_time(fleet: FleetEnv) -> None:
    result = run(fleet, "logs", "dev", "--since", "5m", "--json", "--grep", "logs-probe")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert {o["host"] for o in objects} == set(app_names(fleet))
    assert all({"host", "time", "message"} <= set(o) for o in objects)
    assert all("logs-probe" in o["message"] for o in objects)
    times = [o["time"] for o in objects]
    assert times == sorted(times)
    one = run(fleet, "logs", "dev", app_names(fleet)[0], "-n", "2", "--json")
    assert [json.loads(line)["host"] for line in one.stdout.splitlines()] == [app_names(fleet)[0]] * 2


def test_logs_follow_survives_a_reboot(fleet: FleetEnv) -> None:
    host = fleet.group("app")[2]
    env = dict(os.environ)
    follow = subprocess.Popen([ORCHESTRATE, "--project-dir", str(fleet.project_dir), "logs", "dev", host.name, "-f",
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in follow.stdout or []),
                              daemon=True)
    reader.start()

    def seen(marker: str, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            fleet.http_get(host.address, marker)
            time.sleep(0.5)
            if any(marker in entry["message"] for entry in lines):
                return True
        return False

    try:
        assert seen("/before-reboot", 15), lines
        fleet.ssh(host, "systemctl reboot", check=False)
        time.sleep(2)  # the service stops before the host goes
        wait_healthy(fleet, host)
        assert seen("/after-reboot", 30), "no entry after the reboot reached the follow"
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(timeout=20)
        reader.join(timeout=5)
    assert follow.returncode == 0
    assert "reconnecting" in (follow.stderr.read() if follow.stderr else "")


# --- exec -----------------------------------------------------------------------------------------


def test_exec_prints_each_hosts_name_and_is_audited(fleet: FleetEnv) -> None:
    result = run(fleet, "exec", "dev", "--", "uname", "-n")
    assert result.returncode == 0, result.stderr
    for name in app_names(fleet):
        assert f"{name} {name}" in result.stdout.splitlines()
    data = json.loads(run(fleet, "exec", "dev", "--json", "--", "uname", "-n").stdout)
    assert [(h["name"], h["exit_code"], h["stdout"].strip()) for h in data["hosts"]] == \
        [(n, 0, n) for n in app_names(fleet)]
    with AuditLog(fleet.state_dir, env="dev") as audit:
        entry = audit.entries(1, command="exec")[0]
    assert entry.outcome == "completed" and entry.user
    assert entry.details["argv"] == ["exec", "dev", *app_names(fleet), "--", "uname", "-n"]


def test_exec_failing_on_one_host_exits_non_zero_naming_it(fleet: FleetEnv) -> None:
    bad = app_names(fleet)[1]
    result = run(fleet, "exec", "dev", "--", "sh", "-c", f'test "$(uname -n)" != {bad}')
    assert result.returncode == 1
    assert f"failed on {bad} (exit 1)" in result.stderr
    assert not any(f"failed on {n}" in result.stderr for n in app_names(fleet) if n != bad)
    # the argv reaches the remote shell word by word: nothing is spliced
    quoted = run(fleet, "exec", "dev", app_names(fleet)[0], "--json", "--", "echo", "a b; echo c", "$HOSTNAME")
    assert json.loads(quoted.stdout)["hosts"][0]["stdout"] == "a b; echo c $HOSTNAME\n"


# --- deploy --check, --limit; rollback --limit; notifications ------------------------------------


def test_deploy_check_of_a_new_release_changes_nothing(fleet: FleetEnv, hello_builds: Builds) -> None:
    v1, v2 = hello_builds.v1.release_id, hello_builds.v2.release_id
    before = current_releases(fleet)
    result = run(fleet, "deploy", "dev", "--release", str(hello_builds.v2.binary), "--check", "--json")
    assert result.returncode == 4, result.stderr
    data = json.loads(result.stdout)
    assert data["action"] == "check" and data["changes"] is True
    for host in data["hosts"]:
        assert (host["release_before"], host["release"], host["changes"]) == (v1, v2, True)
    assert current_releases(fleet) == before == dict.fromkeys(app_names(fleet), v1)
    assert versions(fleet) == dict.fromkeys(app_names(fleet), "0.1.0")
    for host in fleet.group("app"):  # not even copied
        assert v2 not in fleet.ssh(host, "ls /opt/hello/releases").stdout
    # the release the hosts run: nothing would change
    same = run(fleet, "deploy", "dev", "--release", str(hello_builds.v1.binary), "--check", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["changes"] is False


def test_deploy_limit_changes_only_that_host_and_notifies(fleet: FleetEnv, hello_builds: Builds,
                                                         listener: Listener) -> None:
    first, *others = app_names(fleet)
    v1, v2 = hello_builds.v1.release_id, hello_builds.v2.release_id
    listener.bodies.clear()
    result = run(fleet, "deploy", "dev", "--release", str(hello_builds.v2.binary), "--limit", first, "--json")
    assert result.returncode == 0, result.stderr
    assert current_releases(fleet) == {first: v2, **dict.fromkeys(others, v1)}
    assert versions(fleet) == {first: "0.2.0", **dict.fromkeys(others, "0.1.0")}
    [body] = listener.bodies
    assert set(body) >= FIELDS
    assert (body["event"], body["env"], body["release"], body["previous_release"], body["state"]) == \
        ("deploy", "dev", v2, v1, "deployed")
    assert body["hosts"] == [first] and body["run"] == json.loads(result.stdout)["journal_run"]
    assert body["user"] and v2 in body["text"]
    # the journal keeps what the post did
    detail = json.loads(run(fleet, "runs", "dev", body["run"], "--json").stdout)
    assert "notifications" in json.dumps(detail)


def test_rollback_limit_and_a_failed_gate_notify(fleet: FleetEnv, hello_builds: Builds, listener: Listener) -> None:
    first = app_names(fleet)[0]
    v1 = hello_builds.v1.release_id
    listener.bodies.clear()
    result = run(fleet, "rollback", "dev", "--limit", first, "--json")
    assert result.returncode == 0, result.stderr
    assert current_releases(fleet) == dict.fromkeys(app_names(fleet), v1)
    assert listener.events() == ["rollback"]
    assert listener.bodies[0]["hosts"] == [first]

    listener.bodies.clear()
    broken = run(fleet, "deploy", "dev", "--release", str(hello_builds.broken.binary), "--skip-backup", "--json")
    assert broken.returncode == 3, broken.stderr
    assert current_releases(fleet) == dict.fromkeys(app_names(fleet), v1)
    [body] = listener.bodies
    assert set(body) >= FIELDS
    assert body["event"] == "gate_failed" and body["state"] == "rolled_back"
    assert body["release"] == hello_builds.broken.release_id and body["previous_release"] == v1
    assert "health gate" in body["text"]


def test_a_webhook_that_fails_never_fails_the_run(fleet: FleetEnv, hello_builds: Builds) -> None:
    env_file = fleet.project_dir / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    # nothing listens on port 9 of loopback: every try is refused
    data["notify"] = {"webhooks": [{"url": "http://127.0.0.1:9/nobody", "events": ["deploy"]}]}
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run(fleet, "deploy", "dev", "--release", str(hello_builds.v1.binary), "--skip-backup", "--json")
    assert result.returncode == 0, result.stderr
    assert "notifying http://127.0.0.1:9/… of deploy failed" in result.stderr
    run_id = json.loads(result.stdout)["journal_run"]
    recorded = json.dumps(json.loads(run(fleet, "runs", "dev", run_id, "--json").stdout))
    assert '"ok": false' in recorded and '"attempts": 3' in recorded

