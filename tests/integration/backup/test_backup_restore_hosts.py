"""Backup, restore and secrets on real local hosts with the real example service deployed.

Every test boots its own fleet (`fleet_factory`, tests/support/fleet.py), deploys examples/hello-service
with `orchestrate deploy`, and drives `orchestrate backup|backups|restore` as a user would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.config.secrets import encrypt_text
from orchestrator.tools.cargo import build_project
from orchestrator.tools.process import run_command
from tests.support.cli import cli_env, orchestrate_argv, run_orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
SERVICE_SRC = REPO / "examples" / "hello-service"
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


@pytest.fixture(scope="module")
def hello_binary() -> Path:
    """The example service, tested and built once for the module (every deploy then ships it)."""
    return build_project(SERVICE_SRC)


def deploy(fleet, binary: Path, *, backup: bool = False) -> None:
    """Deploy the example; without `backup`, skip the backup every deploy takes first (the tests
    here count their own backups)."""
    skip = () if backup else ("--skip-backup",)
    result = run_orchestrate(fleet.project_dir, "deploy", "dev", "--release", str(binary), *skip)
    assert result.returncode == 0, result.stderr[-3000:]


def tree_digest(fleet, host) -> str:
    return fleet.ssh(host, TREE_DIGEST).stdout


def main_pid(fleet, host) -> str:
    return fleet.ssh(host, "systemctl show -p MainPID --value hello.service").stdout.strip()


def healthz(fleet, host) -> str:
    return fleet.ssh(host, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/healthz",
                     check=False).stdout.strip()


def take_backup(fleet) -> dict:
    result = run_orchestrate(fleet.project_dir, "backup", "dev", "--json")
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
    (pre_deploy,) = json.loads(run_orchestrate(fleet.project_dir, "backups", "dev", "--json").stdout)["backups"]
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
    listed = json.loads(run_orchestrate(fleet.project_dir, "backups", "dev", "--json").stdout)
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

    result = run_orchestrate(fleet.project_dir, "restore", "dev", backup["id"], "--yes")
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
    result = run_orchestrate(fleet.project_dir, "restore", "dev", backup_id, "--yes")
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
    result = run_orchestrate(fleet.project_dir, "restore", "dev", backup_id, "--yes", "--from", "controller")
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
    runs = fleet.state_dir / "runs"
    played_before = set(runs.iterdir()) if runs.is_dir() else set()
    backup_id = take_backup(fleet)["id"]  # without Ansible: one session per host, then the archive's download
    assert (set(runs.iterdir()) if runs.is_dir() else set()) == played_before, "the backup ran a playbook"

    # playbooks/backup.yml (ORCHESTRATE_DIRECT=0) writes the controller's copy as the session path does
    time.sleep(1.1)  # backup ids have a resolution of one second
    played = run_orchestrate(fleet.project_dir, "backup", "dev", "--json", env={"ORCHESTRATE_DIRECT": "0"})
    assert played.returncode == 0, played.stderr[-3000:]
    assert set(runs.iterdir()) - played_before, "ORCHESTRATE_DIRECT=0 did not run the playbook"
    played_id = json.loads(played.stdout)["id"]
    copies = [fleet.state_dir / "backups" / b / host.name for b in (backup_id, played_id)]
    for copy in copies:
        assert sorted(p.name for p in copy.iterdir()) == ["MANIFEST.sha256", "data.tar.gz", "release-id"]
        manifest = [line.split("  ") for line in (copy / "MANIFEST.sha256").read_text().splitlines()]
        assert [name for _, name in manifest] == ["data.tar.gz", "release-id"]
        assert dict((n, d) for d, n in manifest)["data.tar.gz"] == hashlib.sha256(
            (copy / "data.tar.gz").read_bytes()).hexdigest()
    assert (copies[0] / "release-id").read_text() == (copies[1] / "release-id").read_text() != "none\n"
    assert stat.S_IMODE((copies[0] / "data.tar.gz").stat().st_mode) == 0o600
    fleet.ssh(host, f"rm -rf /var/backups/hello/{played_id}")
    # the host lost its own copy and its data
    fleet.ssh(host, f"rm -rf /var/backups/hello/{backup_id} && {OVERWRITE_DATA}")
    result = run_orchestrate(fleet.project_dir, "restore", "dev", backup_id, "--yes")
    assert result.returncode == 1 and "not found on this host" in result.stderr
    result = run_orchestrate(fleet.project_dir, "restore", "dev", backup_id, "--yes", "--from", "controller", "--json")
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


#: strace annotates each fd with what it is (-y): a path for files, pipe:[..]/socket:[..] otherwise
TRACED_WRITE = re.compile(r"^\d+\s+(?:write|pwrite64|writev|pwritev2?)\(\d+<([^>]*)>")


@dataclass(frozen=True)
class TracedRun:
    returncode: int
    stdout: str
    stderr: str
    duration: float


def sandboxed(fleet, sandbox: Path, *args: str) -> TracedRun:
    """`orchestrate ARGS` with HOME and TMPDIR in `sandbox`, every write(2) it and its children make
    logged by strace (-y: the fd's path; the first 4 KiB of each buffer) to sandbox/<verb>.strace.

    strace waits for every process it traces, and SSH's ControlPersist master outlives the command
    by a minute (writing only to its sockets): once the command has exited, the processes strace
    still traces (all started by the command) are stopped, so that strace ends and its log is whole.
    """
    env = cli_env(fleet.project_dir, {"HOME": str(sandbox / "home"), "TMPDIR": str(sandbox / "tmp")})
    trace, out, err, pid_file = (sandbox / f"{args[0]}.{kind}" for kind in ("strace", "stdout", "stderr", "pid"))
    argv = ["strace", "-f", "-q", "-y", "--seccomp-bpf", "-s", "4096", "-o", str(trace),
            "-e", "trace=write,pwrite64,writev,pwritev,pwritev2",
            # the command's pid (strace forks probes of its own first): sh records it, then execs
            "sh", "-c", 'echo $$ > "$0" && exec "$@"', str(pid_file),
            *orchestrate_argv(fleet.project_dir, *args)]
    started = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        tracer = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
    try:
        main = ""
        while not main and tracer.poll() is None:
            main = pid_file.read_text().strip() if pid_file.exists() else ""
            time.sleep(0.01)
        while main and Path(f"/proc/{main}").exists() and tracer.poll() is None:
            assert time.monotonic() - started < 600, f"orchestrate {args[0]} still runs after 600 s"
            time.sleep(0.1)
        duration = time.monotonic() - started
        for pid in traced_by(tracer.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        tracer.wait(timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    exited = re.search(rf"^{main}\s+\+\+\+ exited with (\d+) \+\+\+$", trace.read_text(errors="replace"), re.MULTILINE)
    assert exited, f"strace did not see orchestrate {args[0]} (pid {main or '?'}) exit"
    return TracedRun(int(exited.group(1)), out.read_text(), err.read_text(), duration)


def traced_by(tracer: int) -> list[int]:
    """Processes whose TracerPid is `tracer`."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            if re.search(rf"^TracerPid:\s+{tracer}$", status.read_text(), re.MULTILINE):
                found.append(int(status.parent.name))
    return found


def controller_files(root: Path, *, newer_than: float | None = None) -> list[Path]:
    """Regular files under `root` (changed since `newer_than` when given), not following symlinks.

    Skipped: local hosts' disks (`.orchestrate/ENV/hosts/`: overlay dirs holding the hosts' own
    files) and mount points (a host's merged root).
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not (n == "hosts" and here.parent.name == ".orchestrate")
                       and not os.path.ismount(here / n)]
        for name in filenames:
            path = here / name
            try:
                info = path.lstat()
            except FileNotFoundError:  # another process's temporary file
                continue
            if stat.S_ISREG(info.st_mode) and (newer_than is None or max(info.st_mtime, info.st_ctime) >= newer_than):
                found.append(path)
    return found


def holds(path: Path, needle: bytes) -> bool:
    """Whether the file contains `needle` (read in chunks: some files are large)."""
    tail = b""
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                if needle in tail + chunk:
                    return True
                tail = chunk[-len(needle):]
    except FileNotFoundError:
        return False
    return False


def test_a_planted_secret_reaches_only_the_environment_file(fleet_factory, hello_binary: Path,
                                                            tmp_path: Path) -> None:
    fleet = fleet_factory(app_count=1)
    planted = "planted-" + secrets.token_hex(12)
    needle = planted.encode()
    vault = fleet.project_dir / "inventories" / "dev" / "secrets.yml"
    password = (fleet.project_dir / "inventories" / "dev" / ".vault-password-dev").read_text().splitlines()[0]
    vault.write_text(encrypt_text(f"HELLO_SECRET: {planted}\n", password))
    assert planted not in vault.read_text()
    assert shutil.which("strace"), "this test needs strace (Debian package strace)"

    # The runs get their own HOME and TMPDIR (Ansible's ~/.ansible/tmp, Python's tempfile) so that
    # every file they write is in a place searched below.
    sandbox = tmp_path / "sandbox"
    for part in ("home", "tmp"):
        (sandbox / part).mkdir(parents=True)
    stamp = time.time() - 1  # ctime/mtime resolution
    deploy_run = sandboxed(fleet, sandbox, "deploy", "dev", "--release", str(hello_binary), "--skip-backup",
                           "--json")
    assert deploy_run.returncode == 0, deploy_run.stderr[-3000:]
    backup_run = sandboxed(fleet, sandbox, "backup", "dev", "--json")  # backups must not carry it either
    assert backup_run.returncode == 0, backup_run.stderr[-3000:]

    host = fleet.group("app")[0]
    env_file = fleet.ssh(host, "stat -c '%a %U' /etc/hello/hello.env && cat /etc/hello/hello.env").stdout
    assert env_file.splitlines()[0] == "600 root"
    assert re.search(rf"^HELLO_SECRET=\"?{planted}\"?$", env_file, re.MULTILINE)
    config_hash = fleet.ssh(host, "curl -s http://127.0.0.1:8080/config-hash").stdout.strip()
    assert config_hash == fnv1a_64(planted.encode())

    # Not in what the commands printed ...
    for run in (deploy_run, backup_run):
        assert planted not in run.stdout and planted not in run.stderr
    # ... nor in any file on the controller the runs may have written: the sandboxes, the whole
    # project dir, /dev/shm, and whatever changed under /tmp and /var/tmp since the stamp. The
    # local hosts' disks live under .orchestrate/ENV/hosts/<host>/ (overlay upper, work and
    # merged dirs): those files are the host's, not the controller's.
    traces = sorted(sandbox.glob("*.strace"))
    searched = {p for p in controller_files(sandbox) if p not in traces}
    searched |= set(controller_files(fleet.project_dir))
    searched |= set(controller_files(Path("/dev/shm")))
    for scratch in (Path("/tmp"), Path("/var/tmp")):
        searched |= {p for p in controller_files(scratch, newer_than=stamp) if p not in traces}
    leaked = sorted(p for p in searched if holds(p, needle))
    assert leaked == []
    # ... nor in a file that existed only for a while during the runs (a rendered template in
    # Ansible's local tmp, say): strace saw every write to a file; writes to pipes and sockets
    # (the SSH connections) and the secrets' own file in memory (/dev/shm, deleted once the
    # playbook started) are expected.
    writes = [(m.group(1), planted in line) for trace in traces
              for line in trace.read_text(errors="replace").splitlines() if (m := TRACED_WRITE.match(line))]
    with_secret = sorted({path for path, secret in writes if secret and path.startswith("/")})
    assert [p for p in with_secret if not p.startswith("/dev/shm/orch-secrets-")] == []
    assert with_secret and not [p for p in with_secret if Path(p).exists()], "the secrets' file is deleted"

    # The search was not vacuous: Ansible really wrote (short-lived) files into its local temp
    # dir (in memory, /dev/shm/orch-ansible-*, its TMPDIR too, removed after each run),
    # the run dirs (ansible-runner artifacts) and the backup are among the searched files, strace
    # saw the secret leave for the host, and the host's own env file and backup (outside the
    # search) do hold the value.
    written_to = {path for path, _ in writes}
    local_temp = {p for p in written_to if p.startswith("/dev/shm/orch-ansible-")}
    assert local_temp, "Ansible's local temp dir was not used"
    assert not [p for p in local_temp if Path(p).exists()], "Ansible's local temp dir is removed after the run"
    assert any("/runs/" in str(p) and "/artifacts/" in str(p) for p in searched)
    assert any("/backups/" in str(p) for p in searched)
    assert any(secret and not path.startswith("/") for path, secret in writes), "strace saw no write of the secret"
    hosts_dir = fleet.state_dir / "hosts"
    found_on_host = []  # the overlays' upper dirs hold what the host wrote (merged/ is its mounted root)
    for dirpath, dirnames, filenames in os.walk(hosts_dir):
        dirnames[:] = [n for n in dirnames if not os.path.ismount(Path(dirpath) / n)]
        found_on_host += [Path(dirpath) / n for n in filenames if holds(Path(dirpath) / n, needle)]
    assert any(str(p).endswith("etc/hello/hello.env") for p in found_on_host)
    assert any(str(p).endswith("config.env") for p in found_on_host)
    print(f"searched {len(searched)} files, {len(writes)} traced writes; "
          f"deploy {deploy_run.duration:.1f} s, backup {backup_run.duration:.1f} s")
