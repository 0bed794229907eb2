"""Health gates, canary order, the hardened unit, sha256 checks and release retention on real hosts.

One fleet of two app hosts (rolling batches of one host, keep_releases 2) is shared by the tests
of this module; they run in file order and each starts from the releases the previous one left,
as an operator's environment would. Every check asks the hosts: over HTTP from the controller or
over SSH.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.files import sha256_file
from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.release.artifact import prepare_release, release_id
from orchestrator.release.hosts import DeployRequest, deploy, release_vars, role_vars, strategy_vars
from orchestrator.release.results import ReleaseRunError
from orchestrator.release.signing import Staged, sealed_for_shipping
from orchestrator.tools.ansible import PlaybookRun, run_playbook
from orchestrator.tools.cargo import find_cargo
from orchestrator.tools.process import run_command
from tests.support.builds import Builds
from tests.support.fleet import FleetEnv

from .helpers import versions

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "hello-service"
UNIT = "/etc/systemd/system/hello.service"
OVERRIDES = {
    # a short gate keeps the failing releases quick; dev's 10 s is for real starts
    "service": {"health": {"timeout": "3s", "interval": "100ms"}, "keep_releases": 2},
    "rollout": {"batch_size": 1},
}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(module_unbooted_project: Any) -> FleetEnv:
    """Two booted app hosts shared by the module (destroyed with the module's factory)."""
    made = module_unbooted_project(app_count=2, overrides=OVERRIDES)
    local, specs = fleet_for(made.loaded)
    made.hosts = specs
    local.ensure_all(specs)
    made.write_inventory()
    return made


@dataclass(frozen=True)
class Extra:
    """Builds of this module on top of hello_builds."""

    flaky: Path
    """0.2.5 built with the `flaky` feature: unlike the other builds, it reads HELLO_FAIL_PERCENT
    and refuses to start when the value is not a percentage."""


@pytest.fixture(scope="module")
def extra_builds(tmp_path_factory: pytest.TempPathFactory) -> Extra:
    project = tmp_path_factory.mktemp("gates") / "flaky"
    project.mkdir()
    for name in ("Cargo.toml", "Cargo.lock", "src"):
        source = EXAMPLE / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / name)
    for path in (project / "Cargo.toml", project / "Cargo.lock"):
        path.write_text(path.read_text().replace('version = "0.1.0"', 'version = "0.2.5"'))
    run_command([str(find_cargo()), "build", "--release", "--offline", "--features", "flaky",
                 "--manifest-path", str(project / "Cargo.toml")], cwd=project, timeout=1200)
    return Extra(flaky=project / "target" / "release" / "hello-service")


def relabeled(base: Path, binary: Path, version: str) -> Path:
    """A copy of `binary` to deploy with `--version VERSION`: same bytes, another release id."""
    target = base / version / "hello-service"
    target.parent.mkdir(parents=True)
    shutil.copy2(binary, target)
    return target


# --- helpers -----------------------------------------------------------------------------------


def corrupting(staged: Path) -> Callable[[], None]:
    """A `before_ship` hook flipping one byte of the staged binary: after the controller hashed and
    staged it, before it is shipped."""

    def corrupt() -> None:
        data = bytearray(staged.read_bytes())
        data[len(data) // 2] ^= 0xFF
        staged.write_bytes(bytes(data))

    return corrupt


def all_healthy(fleet: FleetEnv) -> bool:
    return all(fleet.http_get(h.address, "/healthz")[0] == 200 for h in fleet.group("app"))


def links(fleet: FleetEnv, host: Any) -> tuple[str, str, list[str]]:
    """(current, previous, sorted release dirs) on `host`."""
    out = fleet.ssh(host, "readlink /opt/hello/current; readlink /opt/hello/previous || echo -; "
                          "echo; ls -1 /opt/hello/releases").stdout
    head, _, tail = out.partition("\n\n")
    current, previous = (line.rsplit("/", 1)[-1] for line in head.splitlines())
    return current, previous, sorted(tail.split())


def main_pid(fleet: FleetEnv, host: Any) -> str:
    return fleet.ssh(host, "systemctl show -p MainPID --value hello.service").stdout.strip()


def job_events(fleet: FleetEnv, run_id: str) -> list[dict[str, Any]]:
    """ansible-runner's events of a run, in the order they happened."""
    folder = fleet.state_dir / "runs" / run_id / "artifacts" / run_id / "job_events"
    events = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(events, key=lambda e: int(e["counter"]))


def deploy_playbook(fleet: FleetEnv, binary: Path, **overrides: Any) -> Any:
    """playbooks/deploy.yml with the variables `orchestrate deploy` passes, plus `overrides`."""
    loaded = fleet.loaded
    release = prepare_release(loaded, binary)
    names = [h.name for h in fleet.group("app")]
    # the signed manifest as `orchestrate deploy` ships it (the role requires it with signing keys)
    sealed = sealed_for_shipping(loaded, Staged(id=release.id, version=release.version,
                                                directory=release.binary.parent, source=release.source))
    extra = {**role_vars(loaded, None), **release_vars(release), **sealed.role_vars(),
             **strategy_vars(loaded, "rolling", names), **overrides}
    return run_playbook(PlaybookRun(
        playbook=fleet.project_dir / "playbooks" / "deploy.yml", inventory=fleet.inventory,
        project_dir=fleet.project_dir, runs_dir=fleet.state_dir / "runs", extra_vars=extra,
        limit=names[0], mitogen=True,
    ))


# --- the tests (in order: each starts from what the one before left) -----------------------------


def test_the_installed_unit_is_hardened_and_a_unit_failing_verify_is_refused(
        fleet: FleetEnv, hello_builds: Builds) -> None:
    code, _, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v1.binary), "--skip-backup")
    assert code == 0, err
    first = fleet.group("app")[0]
    props = fleet.ssh(first, "systemctl show hello.service -p User -p NoNewPrivileges -p ProtectSystem "
                             "-p ReadWritePaths -p Restart -p EnvironmentFiles").stdout
    shown = dict(line.split("=", 1) for line in props.splitlines())
    assert shown["User"] == "hello"
    assert shown["NoNewPrivileges"] == "yes"
    assert shown["ProtectSystem"] == "strict"
    assert shown["ReadWritePaths"] == "/var/lib/hello"
    assert shown["Restart"] == "on-failure"
    assert shown["EnvironmentFiles"].startswith("/etc/hello/hello.env ")
    # a dedicated system user without a login shell runs the process
    passwd = fleet.ssh(first, "getent passwd hello").stdout.strip().split(":")
    assert int(passwd[2]) < 1000 and passwd[6] == "/usr/sbin/nologin"
    assert fleet.ssh(first, f"ps -o user= -p {main_pid(fleet, first)}").stdout.strip() == "hello"
    # with a release in place the installed unit verifies without a single complaint
    verify = fleet.ssh(first, f"systemd-analyze verify {UNIT} 2>&1", check=False)
    assert (verify.returncode, verify.stdout.strip()) == (0, "")

    # the role's own deploy with a unit that systemd refuses (ExecStart becomes a relative path)
    unit_before = fleet.ssh(first, f"sha256sum {UNIT}").stdout.split()[0]
    pid_before = main_pid(fleet, first)
    result = deploy_playbook(fleet, hello_builds.v2.binary, rust_service_base_dir="opt/hello")
    assert not result.ok
    (failure,) = result.failures
    assert (failure.host, failure.task) == (first.name, "Install the systemd unit")
    assert "failed to validate" in failure.message
    (unit_task,) = [r for r in result.results if r.task == "Install the systemd unit"]
    assert "Neither a valid executable name nor an absolute path" in unit_task.result["stderr"]
    # nothing after it ran: the old unit, the old process and v1 are in place
    assert not result.results_of("rust_release")
    assert fleet.ssh(first, f"sha256sum {UNIT}").stdout.split()[0] == unit_before
    assert main_pid(fleet, first) == pid_before
    assert versions(fleet) == dict.fromkeys([h.name for h in fleet.group("app")], "0.1.0")


def test_a_good_canary_goes_first_then_the_rest(fleet: FleetEnv, hello_builds: Builds) -> None:
    canary, rest = fleet.group("app")
    code, result, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v2.binary), "--skip-backup",
                                          "--strategy", "canary")
    assert code == 0, err
    # `canary` without a load balancer is the host-level canary (reported as canary-hosts)
    assert result["state"] == "deployed" and result["strategy"] in ("canary", "canary-hosts")
    v2 = hello_builds.v2.release_id
    assert {h["name"]: h["release"] for h in result["hosts"]} == {canary.name: v2, rest.name: v2}
    assert versions(fleet) == {canary.name: "0.2.0", rest.name: "0.2.0"}

    # the hosts' own record: the canary served v2 (switched, restarted, gate passed) before v2 was
    # switched in on the rest
    stamps = {h.name: json.loads(fleet.ssh(h, f"cat /opt/hello/releases/{v2}/RELEASE").stdout)["deployed_at"]
              for h in (canary, rest)}
    canary_started = fleet.ssh(canary, "date -d \"$(cat /var/lib/hello/started_at)\" +%s.%N").stdout
    assert stamps[canary.name] < float(canary_started) < stamps[rest.name]


def test_a_later_batch_failing_its_gate_puts_the_earlier_batch_back(
        fleet: FleetEnv, hello_builds: Builds, extra_builds: Extra) -> None:
    first, second = fleet.group("app")
    v2 = hello_builds.v2.release_id
    assert versions(fleet) == {first.name: "0.2.0", second.name: "0.2.0"}
    before = {h.name: links(fleet, h) for h in (first, second)}
    # A setting local to the second host that v2 ignores but the flaky build reads and refuses
    # (exit 2 at start): the new release cannot start there, the old one can.
    dropin = "/etc/systemd/system/hello.service.d"
    fleet.ssh(second, f"mkdir -p {dropin} && printf '[Service]\\nEnvironment=HELLO_FAIL_PERCENT=150\\n' "
                      f"> {dropin}/local.conf && systemctl daemon-reload")
    try:
        code, result, err = fleet.orchestrate("deploy", "--release", str(extra_builds.flaky), "--skip-backup")
    finally:
        fleet.ssh(second, f"rm -rf {dropin} && systemctl daemon-reload")
    assert code == 3, err
    assert result["state"] == "rolled_back"
    flaky = release_id("0.2.5", sha256_file(extra_builds.flaky))
    by_host = {h["name"]: h for h in result["hosts"]}
    # the first batch passed on the first host; the second host failed its gate and switched back
    assert by_host[first.name]["switched"] and by_host[first.name]["release"] == flaky
    assert by_host[second.name]["failed"] and by_host[second.name]["rolled_back"]
    assert by_host[second.name]["release"] == v2
    assert result["restored_hosts"] == {first.name: v2}
    assert result["restore"]["rc"] == 0
    assert versions(fleet) == {first.name: "0.2.0", second.name: "0.2.0"}
    assert all_healthy(fleet)
    assert links(fleet, first)[0] == links(fleet, second)[0] == v2
    # the restored host gets its previous of before the rollout back too (not the failed release,
    # which a later `orchestrate rollback` would switch to), and the rollout that stopped removed
    # none of the releases the hosts had (keep 2: the restore itself drops the failed one again)
    assert links(fleet, first)[:2] == before[first.name][:2]
    assert links(fleet, second)[:2] == before[second.name][:2]
    assert links(fleet, first)[2] == before[first.name][2]
    # evidence of the host that failed, and only of it
    evidence = Path(result["evidence_dir"])
    assert sorted(p.name for p in evidence.iterdir()) == [second.name]
    assert "hello.service is" in (evidence / second.name / "health.txt").read_text()
    assert "HELLO_FAIL_PERCENT: '150' is not a percentage" in (evidence / second.name / "journal.txt").read_text()
    assert "hello.service" in (evidence / second.name / "status.txt").read_text()


def test_a_binary_whose_sha256_differs_is_refused_on_the_host(fleet: FleetEnv, hello_builds: Builds,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # through the playbook, whose copy ships whatever differs from the host's file: the host's
    # check of the signed manifest refuses it (the release path without a playbook: next test)
    monkeypatch.setenv("ORCHESTRATE_DIRECT", "0")
    first, second = fleet.group("app")
    before = {h.name: (links(fleet, h)[:2], main_pid(fleet, h)) for h in (first, second)}
    v1 = hello_builds.v1.release_id
    loaded = fleet.loaded
    staged = loaded.state_dir / "artifacts" / v1 / "hello"

    with pytest.raises(ReleaseRunError) as caught:
        deploy(loaded, DeployRequest(release_path=hello_builds.v1.binary), before_ship=corrupting(staged))
    run = caught.value.run
    failed = [h for h in run.hosts if h.failed]
    assert [h.name for h in failed] == [first.name]
    # the signed manifest names the file whose digest differs (the host checks it before the binary's sha256)
    assert f"release {v1} refused: hello: sha256 " in failed[0].message and not failed[0].switched
    assert "differs from the manifest's" in failed[0].message
    assert run.restored_hosts == {} and run.restore is None
    # the corrupt copy is on the first host, was never switched in; the second host was not touched
    good = sha256_file(hello_builds.v1.binary)
    on_host = {h.name: fleet.ssh(h, f"sha256sum /opt/hello/releases/{v1}/hello").stdout.split()[0]
               for h in (first, second)}
    assert on_host == {first.name: sha256_file(staged), second.name: good} and sha256_file(staged) != good
    assert set(run.run.hosts) == {first.name}, "the rollout stopped before the second batch"
    assert {h.name: (links(fleet, h)[:2], main_pid(fleet, h)) for h in (first, second)} == before
    assert versions(fleet) == {first.name: "0.2.0", second.name: "0.2.0"}
    assert all_healthy(fleet)


def test_bytes_that_differ_from_the_release_are_refused_before_they_are_written(
        fleet: FleetEnv, hello_builds: Builds, tmp_path: Path) -> None:
    first, second = fleet.group("app")
    before = {h.name: (links(fleet, h)[:2], main_pid(fleet, h)) for h in (first, second)}
    binary = relabeled(tmp_path, hello_builds.v1.binary, "0.7.0")
    loaded = fleet.loaded
    rid = release_id("0.7.0", sha256_file(binary))
    staged = loaded.state_dir / "artifacts" / rid / "hello"

    with pytest.raises(ReleaseRunError) as caught:
        deploy(loaded, DeployRequest(release_path=binary, version="0.7.0"), before_ship=corrupting(staged))
    run = caught.value.run
    assert run.run.playbook == "deploy"  # the setup is the recorded one: no playbook ran
    failed = [h for h in run.hosts if h.failed]
    # the first batch's host refused the bytes before writing them; the rollout stopped there
    assert [f.host for f in run.run.failures] == [first.name] and not failed
    assert "of the bytes received does not match" in run.run.failures[0].message
    assert set(run.run.hosts) == {first.name}
    assert fleet.ssh(first, f"ls /opt/hello/releases/{rid} 2>/dev/null; ls -a /opt/hello | grep -c receive",
                     check=False).stdout.split() == ["0"]
    assert {h.name: (links(fleet, h)[:2], main_pid(fleet, h)) for h in (first, second)} == before
    assert versions(fleet) == {first.name: "0.2.0", second.name: "0.2.0"}
    assert all_healthy(fleet)


def test_keep_two_releases_never_removes_current_or_previous(
        fleet: FleetEnv, hello_builds: Builds, tmp_path: Path) -> None:
    app = fleet.group("app")
    r3 = relabeled(tmp_path, hello_builds.v2.binary, "0.3.0")  # serves /version 0.2.0
    r4 = relabeled(tmp_path, hello_builds.v1.binary, "0.4.0")  # serves /version 0.1.0
    id3, id4 = release_id("0.3.0", sha256_file(r3)), release_id("0.4.0", sha256_file(r4))
    v1 = hello_builds.v1.release_id

    for binary, version in ((r3, "0.3.0"), (r4, "0.4.0")):
        code, _, err = fleet.orchestrate("deploy", "--release", str(binary), "--version", version, "--skip-backup")
        assert code == 0, err
    for host in app:  # everything older went, the last two stay
        assert links(fleet, host) == (id4, id3, sorted([id3, id4]))

    code, _, err = fleet.orchestrate("rollback")
    assert code == 0, err
    # previous (id3 after the next deploy) is now the oldest release on the host: it must stay
    code, _, err = fleet.orchestrate("deploy", "--release", str(hello_builds.v1.binary), "--skip-backup")
    assert code == 0, err
    for host in app:
        assert links(fleet, host) == (v1, id3, sorted([v1, id3]))
    assert versions(fleet) == dict.fromkeys([h.name for h in app], "0.1.0")

    code, status, err = fleet.orchestrate("rollback")
    assert code == 0, err
    assert versions(fleet) == dict.fromkeys([h.name for h in app], "0.2.0")
    code, status, err = fleet.orchestrate("status")
    assert code == 0, err
    assert status["release"] == id3
    assert all(h["previous_release"] == v1 and h["healthy"] for h in status["hosts"])


def _setup_tasks(fleet: FleetEnv, run_id: str) -> dict[str, dict[str, str]]:
    """host -> {setup task: ok/changed/skipped} of run `run_id`, from ansible-runner's events."""
    names = ("Create the service's system user", "Install the systemd unit", "Record the setup of this host")
    found: dict[str, dict[str, str]] = {}
    for event in job_events(fleet, run_id):
        data = event.get("event_data") or {}
        if data.get("task") in names and event["event"] in ("runner_on_ok", "runner_on_skipped"):
            outcome = "skipped" if event["event"] == "runner_on_skipped" else (
                "changed" if (data.get("res") or {}).get("changed") else "ok")
            found.setdefault(data["host"], {})[data["task"]] = outcome
    return found


def test_a_release_change_skips_a_recorded_setup_and_a_hand_edit_brings_it_back(
        fleet: FleetEnv, hello_builds: Builds, tmp_path: Path) -> None:
    first, second = fleet.group("app")
    names = [first.name, second.name]
    releases = [relabeled(tmp_path, hello_builds.v2.binary, "0.5.0"), relabeled(tmp_path, hello_builds.v1.binary,
                                                                                "0.6.0")]
    # the setup of the hosts as the deploys before left it: recorded once, the record names the
    # unit and the signing keys with their sha256
    code, result, err = fleet.orchestrate("deploy", "--release", str(releases[0]), "--version", "0.5.0",
                                          "--skip-backup")
    assert code == 0, err
    records = {h.name: fleet.ssh(h, "cat /etc/hello/.setup.*.sha256").stdout.split() for h in (first, second)}
    for host in (first, second):
        unit_sha = fleet.ssh(host, f"sha256sum {UNIT}").stdout.split()[0]
        assert records[host.name][:2] == [unit_sha, UNIT], records

    # a release change on an unchanged setup: no playbook runs (the environment file, the
    # transfer and the gated switch over one session per host); the release itself is copied,
    # verified and switched as ever
    code, result, err = fleet.orchestrate("deploy", "--release", str(releases[1]), "--version", "0.6.0",
                                          "--skip-backup")
    assert code == 0, err
    assert result["run"]["playbook"] == "deploy"
    assert not (fleet.state_dir / "runs" / result["run"]["run_id"]).exists()
    # per host: the environment file (unchanged), the transfer and the switch (changed), the cleanup
    counts = result["run"]["hosts"]
    assert sorted(counts) == sorted(names)
    assert all(c["ok"] == 4 and c["changed"] >= 2 and c["failed"] == 0 for c in counts.values()), counts
    assert all(h["switched"] and h["healthy"] for h in result["hosts"])
    assert versions(fleet) == dict.fromkeys(names, "0.1.0")

    # a unit edited by hand on one host: the deploy goes through the playbook, where that host runs
    # its setup again (the edit is undone) and the other one still skips it
    fleet.ssh(first, f"echo '# edited by hand' >> {UNIT}")
    code, result, err = fleet.orchestrate("deploy", "--release", str(releases[0]), "--version", "0.5.0",
                                          "--skip-backup")
    assert code == 0, err
    assert result["run"]["playbook"] == "deploy.yml"
    tasks = _setup_tasks(fleet, result["run"]["run_id"])
    assert tasks[second.name] == dict.fromkeys(("Create the service's system user", "Install the systemd unit",
                                                "Record the setup of this host"), "skipped")
    assert tasks[first.name] == {"Create the service's system user": "ok", "Install the systemd unit": "changed",
                                 "Record the setup of this host": "changed"}
    assert fleet.ssh(first, f"grep -c 'edited by hand' {UNIT}", check=False).stdout.strip() == "0"
    assert versions(fleet) == dict.fromkeys(names, "0.2.0")
