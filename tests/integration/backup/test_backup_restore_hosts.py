"""Backup, restore and secrets on real local hosts with the real example service deployed.

Every test boots its own fleet (tests/integration/conftest.py), deploys examples/hello-service
with `orchestrate deploy`, and drives `orchestrate backup|backups|restore` as a user would.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from pathlib import Path

import pytest

from orchestrator.release import build_project
from orchestrator.secrets import PASSWORD_FILE_ENV, encrypt_text
from orchestrator.tools.process import CommandResult, run_command

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
SERVICE_SRC = REPO / "examples" / "hello-service"
ORCHESTRATE = Path(sys.executable).parent / "orchestrate"
DATA_DIR = "/var/lib/hello"
# The service rewrites started_at on every start (so also right after a restore); everything
# else in the data dir belongs to the test and must come back bit for bit.
TREE_DIGEST = (
    f"cd {DATA_DIR} && find . ! -name started_at -printf '%p %u %g %m\\n' | sort | sha256sum && "
    "find . -type f ! -name started_at -print0 | sort -z | xargs -0 -r sha256sum | sha256sum"
)
WRITE_DATA = (
    f"mkdir -p {DATA_DIR}/db/segments && head -c 300000 /dev/urandom > {DATA_DIR}/db/segments/000001 && "
    f"echo 41 > {DATA_DIR}/db/counter && printf 'k=v\\n' > {DATA_DIR}/settings && "
    f"chown -R hello:hello {DATA_DIR} && chmod 0640 {DATA_DIR}/settings"
)
OVERWRITE_DATA = (
    f"rm -rf {DATA_DIR}/db && echo overwritten > {DATA_DIR}/settings && touch {DATA_DIR}/stray"
)


def orchestrate(fleet, *args: str) -> CommandResult:
    project_dir = fleet.project_dir
    env = {PASSWORD_FILE_ENV: str(project_dir / "inventories" / "dev" / ".vault-password-dev")}
    return run_command([ORCHESTRATE, "--project-dir", project_dir, *args], env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def hello_binary() -> Path:
    """The example service, tested and built once for the module (every deploy then ships it)."""
    return build_project(SERVICE_SRC)


def deploy(fleet, binary: Path, *, backup: bool = False) -> None:
    """Deploy the example; without `backup`, skip the backup every deploy takes first (the tests
    here count their own backups)."""
    result = orchestrate(fleet, "deploy", "dev", "--release", str(binary), *(() if backup else ("--skip-backup",)))
    assert result.returncode == 0, result.stderr[-3000:]


def tree_digest(fleet, host) -> str:
    return fleet.ssh(host, TREE_DIGEST).stdout


def main_pid(fleet, host) -> str:
    return fleet.ssh(host, "systemctl show -p MainPID --value hello.service").stdout.strip()


def healthz(fleet, host) -> str:
    return fleet.ssh(host, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/healthz",
                     check=False).stdout.strip()


def take_backup(fleet) -> dict:
    result = orchestrate(fleet, "backup", "dev", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def flip_byte(path: Path | str) -> str:
    """Python one-liner flipping one byte in the middle of `path` (run locally or on a host)."""
    return (f"python3 -c \"p='{path}'; b=bytearray(open(p,'rb').read()); b[len(b)//2]^=1; "
            f"open(p,'wb').write(bytes(b))\"")


def test_backup_overwrite_restore_gives_the_data_back(fleet_factory, hello_binary: Path) -> None:
    fleet = fleet_factory(app_count=2)
    deploy(fleet, hello_binary, backup=True)
    # every deploy backs the hosts up first: fresh hosts, so no release in that backup
    (pre_deploy,) = json.loads(orchestrate(fleet, "backups", "dev", "--json").stdout)["backups"]
    assert {h["release_id"] for h in pre_deploy["hosts"]} == {"none"}
    app = fleet.group("app")
    for host in app:
        fleet.ssh(host, WRITE_DATA)
    before = {h.name: tree_digest(fleet, h) for h in app}
    release = {h.name: fleet.ssh(h, "readlink /opt/hello/current").stdout.strip() for h in app}

    backup = take_backup(fleet)
    assert re.fullmatch(r"\d{8}T\d{6}Z", backup["id"])
    assert [h["host"] for h in backup["hosts"]] == [h.name for h in app]
    assert all(h["size"] > 300_000 and h["release_id"] == release[h["host"]].split("/")[-1]
               for h in backup["hosts"])
    listed = json.loads(orchestrate(fleet, "backups", "dev", "--json").stdout)
    assert [b["id"] for b in listed["backups"]] == [backup["id"], pre_deploy["id"]]
    assert listed["backups"][0]["complete"]
    controller_copy = fleet.state_dir / "backups" / backup["id"] / app[0].name
    assert sorted(p.name for p in controller_copy.iterdir()) == ["MANIFEST.sha256", "data.tar.gz", "release-id"]
    host_copy = fleet.ssh(app[0], f"ls /var/backups/hello/{backup['id']}").stdout.split()
    assert sorted(host_copy) == ["MANIFEST.sha256", "config.env", "data.tar.gz", "release-id"]

    # damage the data and move `current` to another release dir: restore undoes both
    for host in app:
        fleet.ssh(host, OVERWRITE_DATA)
        fleet.ssh(host, "cp -a /opt/hello/current/ /opt/hello/releases/0.0.9-000000000000 && "
                        "ln -sfn releases/0.0.9-000000000000 /opt/hello/current && systemctl restart hello")
    assert all(tree_digest(fleet, h) != before[h.name] for h in app)

    result = orchestrate(fleet, "restore", "dev", backup["id"], "--yes")
    assert result.returncode == 0, result.stderr[-3000:]
    for host in app:
        assert tree_digest(fleet, host) == before[host.name]
        assert fleet.ssh(host, "readlink /opt/hello/current").stdout.strip() == release[host.name]
        assert fleet.ssh(host, "systemctl is-active hello.service", check=False).stdout.strip() == "active"
        assert healthz(fleet, host) == "200"
        assert fleet.ssh(host, f"ls -d {DATA_DIR}.* 2>/dev/null | wc -l").stdout.strip() == "0"


def test_a_corrupt_backup_is_refused_and_the_hosts_are_untouched(fleet_factory, hello_binary: Path) -> None:
    fleet = fleet_factory(app_count=2)
    deploy(fleet, hello_binary)
    app = fleet.group("app")
    for host in app:
        fleet.ssh(host, WRITE_DATA)
    backup_id = take_backup(fleet)["id"]
    for host in app:
        fleet.ssh(host, "echo 42 > /var/lib/hello/db/counter")
    state = {h.name: (tree_digest(fleet, h), main_pid(fleet, h)) for h in app}

    # one byte flipped in the archive kept on the second host
    fleet.ssh(app[1], flip_byte(f"/var/backups/hello/{backup_id}/data.tar.gz"))
    result = orchestrate(fleet, "restore", "dev", backup_id, "--yes")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "corrupt" in errors[0] and app[1].name in errors[0]
    assert "data.tar.gz: sha256 differs from the manifest" in errors[0]
    assert "nothing was changed" in errors[0]
    for host in app:  # the healthy host was not touched either: every copy is verified first
        assert (tree_digest(fleet, host), main_pid(fleet, host)) == state[host.name]
        assert healthz(fleet, host) == "200"

    # one byte flipped in the controller's copy of the first host's archive
    controller_archive = fleet.state_dir / "backups" / backup_id / app[0].name / "data.tar.gz"
    run_command(["sh", "-c", flip_byte(controller_archive)])
    result = orchestrate(fleet, "restore", "dev", backup_id, "--yes", "--from", "controller")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"{app[0].name}: data.tar.gz: sha256 differs from the manifest" in errors[0]
    assert "on the controller" in errors[0]
    for host in app:
        assert (tree_digest(fleet, host), main_pid(fleet, host)) == state[host.name]


def test_restore_from_the_controller_copy(fleet_factory, hello_binary: Path) -> None:
    fleet = fleet_factory(app_count=1)
    deploy(fleet, hello_binary)
    host = fleet.group("app")[0]
    fleet.ssh(host, WRITE_DATA)
    before = tree_digest(fleet, host)
    backup_id = take_backup(fleet)["id"]
    # the host lost its own copy and its data
    fleet.ssh(host, f"rm -rf /var/backups/hello/{backup_id} && {OVERWRITE_DATA}")
    result = orchestrate(fleet, "restore", "dev", backup_id, "--yes")
    assert result.returncode == 1 and "not found on this host" in result.stderr
    result = orchestrate(fleet, "restore", "dev", backup_id, "--yes", "--from", "controller", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["source"] == "controller"
    assert tree_digest(fleet, host) == before
    assert healthz(fleet, host) == "200"
    assert fleet.ssh(host, "ls -A /var/backups/hello").stdout.split() == []


def fnv1a_64(data: bytes) -> str:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) % (1 << 64)
    return f"{value:016x}"


def test_a_planted_secret_reaches_only_the_environment_file(fleet_factory, hello_binary: Path) -> None:
    fleet = fleet_factory(app_count=1)
    planted = "planted-" + secrets.token_hex(12)
    vault = fleet.project_dir / "inventories" / "dev" / "secrets.yml"
    password = (fleet.project_dir / "inventories" / "dev" / ".vault-password-dev").read_text().splitlines()[0]
    vault.write_text(encrypt_text(f"HELLO_SECRET: {planted}\n", password))
    assert planted not in vault.read_text()

    deploy(fleet, hello_binary)
    take_backup(fleet)  # backups must not carry it to the controller either
    host = fleet.group("app")[0]
    env_file = fleet.ssh(host, "stat -c '%a %U' /etc/hello/hello.env && cat /etc/hello/hello.env").stdout
    assert env_file.splitlines()[0] == "600 root"
    assert re.search(rf"^HELLO_SECRET=\"?{planted}\"?$", env_file, re.MULTILINE)
    config_hash = fleet.ssh(host, "curl -s http://127.0.0.1:8080/config-hash").stdout.strip()
    assert config_hash == fnv1a_64(planted.encode())

    # The local hosts' disks live under .orchestrate/ENV/hosts/<host>/ (overlay upper, work
    # and merged dirs): those files are the host's, not the controller's. Everything else
    # under .orchestrate/ is the controller's and is searched.
    orchestrate_dir = fleet.project_dir / ".orchestrate"
    hosts_dir = fleet.state_dir / "hosts"
    found_on_host = []
    searched = []
    leaked = []
    for path in orchestrate_dir.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if path.is_relative_to(hosts_dir):
            if planted.encode() in data:
                found_on_host.append(path)
            continue
        searched.append(path)
        if planted.encode() in data:
            leaked.append(path)
    assert leaked == []
    # the search covered the run dirs (ansible-runner artifacts, env/, command) and the backups
    assert any("/runs/" in str(p) and "/artifacts/" in str(p) for p in searched)
    assert any("/backups/" in str(p) for p in searched)
    # and would have found the value: it is in the host's env file and its host-only backup
    assert any(str(p).endswith("etc/hello/hello.env") for p in found_on_host)
    assert any(str(p).endswith("config.env") for p in found_on_host)
    assert not [p for p in Path("/dev/shm").glob("orch-secrets-*") if planted.encode() in p.read_bytes()]
