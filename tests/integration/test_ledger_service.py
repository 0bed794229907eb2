"""Integration tests of examples/ledger-service: build it with cargo, run ledgerd, talk HTTP.

Nothing is mocked: each test runs the real binary (or the one packed in a real bundle) on a free
loopback port with its own state directory, runs the real `ledgerd migrate`, and checks what the
service answers, what it writes and how it exits.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from tests.support.output import text_holding

pytestmark = pytest.mark.integration

CRATE_DIR = Path(__file__).resolve().parents[2] / "examples" / "ledger-service"
MIGRATIONS = CRATE_DIR / "migrations"
BUILD_ID = "itest-ledger-7"
NAME = "integration ledger"
SECRET = "integration-secret-4d1e8b"
REQUIRED_SCHEMA = 2
#: the routes whose 2xx and 5xx series exist from the first scrape
ROUTES = ("/", "/entries", "/live", "/ready", "/version", "/metrics", "/config-hash")
CARGO_TIMEOUT_S = 600
START_TIMEOUT_S = 10.0
# Proxies configured in the environment must not see requests to the loopback service.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- helpers -------------------------------------------------------------------------------


def find_cargo() -> str:
    """Path of cargo: $CARGO, then PATH, then rustup's default location."""
    candidates = [
        os.environ.get("CARGO"),
        shutil.which("cargo"),
        str(Path.home() / ".cargo" / "bin" / "cargo"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("cargo not found: set CARGO or put cargo on PATH")


def cargo_env(target_dir: Path) -> dict[str, str]:
    return {**os.environ, "CARGO_TARGET_DIR": str(target_dir), "LEDGER_BUILD_ID": BUILD_ID}


def run_cargo(args: Sequence[str], target_dir: Path) -> subprocess.CompletedProcess[str]:
    """Runs cargo offline with the committed Cargo.lock; fails the test when cargo fails."""
    argv = [find_cargo(), *args, "--offline", "--locked"]
    result = subprocess.run(
        argv,
        cwd=CRATE_DIR,
        env=cargo_env(target_dir),
        capture_output=True,
        text=True,
        timeout=CARGO_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{shlex.join(argv)} exited with {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def build_release(target_dir: Path, features: Sequence[str] = ()) -> Path:
    """Builds the release binary into `target_dir` and returns its path."""
    args = ["build", "--release"]
    if features:
        args += ["--features", ",".join(features)]
    result = run_cargo(args, target_dir)
    assert "warning" not in result.stderr, result.stderr
    binary = target_dir / "release" / "ledgerd"
    assert binary.is_file(), f"cargo did not produce {binary}"
    return binary


def run_ledgerd(binary: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs one command of `binary` to completion (migrate, --version, a start that fails)."""
    return subprocess.run(
        [str(binary), *map(str, args)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_BACKTRACE": "0"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def migrate(binary: Path, state_dir: Path, migrations: Path = MIGRATIONS) -> subprocess.CompletedProcess[str]:
    return run_ledgerd(binary, "migrate", "--state", state_dir, "--migrations", migrations)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Waits until something accepts connections on `port`; fails if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    state_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()


def start_service(binary: Path, state_dir: Path, *, migrations: Path | None = None) -> Service:
    """Starts `binary` on a free loopback port with `state_dir` (which need not exist yet)."""
    port = free_port()
    log_path = state_dir.parent / f"ledgerd-{port}.log"
    env: Mapping[str, str] = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LEDGER_NAME": NAME,
        "LEDGER_SECRET": SECRET,
    }
    argv = [str(binary), "--listen", f"127.0.0.1:{port}", "--state", str(state_dir)]
    if migrations is not None:
        argv += ["--migrations", str(migrations)]
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    # Request logs go to a file: a pipe nobody reads would fill up and block the service.
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    service = Service(process, port, state_dir, log_path)
    try:
        wait_for_port(port, process, START_TIMEOUT_S)
    except AssertionError as error:
        stop(service)
        raise AssertionError(f"{error}\n{service.log()}") from None
    return service


def stop(service: Service) -> None:
    if service.process.poll() is None:
        service.process.kill()
        service.process.wait(timeout=5)


def fetch(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, Message, bytes]:
    """(status, headers, body) of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def answer(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET."""
    status, _, body = fetch(url)
    return status, body


def raw_exchange(port: int, request: bytes, timeout: float = 2.0) -> bytes:
    """Sends `request` and returns everything the service sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def metric_value(exposition: str, series: str) -> float | None:
    """Value of one series, e.g. 'ledger_http_responses_total{class="2xx",route="/"}'."""
    for line in exposition.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def responses(klass: str, route: str) -> str:
    return f'ledger_http_responses_total{{class="{klass}",route="{route}"}}'


def fnv1a_64(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger-target")


@pytest.fixture(scope="session")
def ledgerd(target_dir: Path) -> Path:
    return build_release(target_dir)


def _feature_build(tmp_path_factory: pytest.TempPathFactory, feature: str) -> Path:
    # A target directory of its own: the feature build would replace target/release/ledgerd.
    return build_release(tmp_path_factory.mktemp(f"ledger-target-{feature}"), features=[feature])


@pytest.fixture(scope="session")
def broken_ledgerd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _feature_build(tmp_path_factory, "broken")


@pytest.fixture(scope="session")
def panic_ledgerd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _feature_build(tmp_path_factory, "panic")


@pytest.fixture(scope="session")
def failmigrate_ledgerd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _feature_build(tmp_path_factory, "failmigrate")


@pytest.fixture
def service(ledgerd: Path, tmp_path: Path) -> Iterator[Service]:
    """A running service on a state directory that has not been migrated."""
    running = start_service(ledgerd, tmp_path / "state")
    yield running
    stop(running)


@pytest.fixture
def migrated(ledgerd: Path, service: Service) -> Service:
    """The running service after `ledgerd migrate` has brought its state to the required schema."""
    result = migrate(ledgerd, service.state_dir)
    assert result.returncode == 0, result.stderr
    return service


# --- the crate, the command line -----------------------------------------------------------


def test_crate_unit_tests_pass(target_dir: Path) -> None:
    result = run_cargo(["test"], target_dir)
    assert re.search(r"test result: ok\. [1-9]\d* passed; 0 failed", result.stdout), result.stdout


def test_version_is_the_last_word_of_the_first_line(ledgerd: Path) -> None:
    result = run_ledgerd(ledgerd, "--version")
    assert (result.returncode, result.stdout) == (0, "ledgerd 0.1.0\n")
    assert result.stdout.splitlines()[0].split()[-1] == "0.1.0"


def test_help_and_usage_errors(ledgerd: Path) -> None:
    shown = run_ledgerd(ledgerd, "--help")
    assert shown.returncode == 0
    assert "--listen ADDR:PORT" in shown.stdout and "ledgerd migrate" in shown.stdout

    cases = {
        ("--port", "8080"): "unknown argument '--port'",
        ("--listen", "9300", "--state", "s"): "--listen: '9300' is not ADDR:PORT",
        ("--listen", "127.0.0.1:9300"): "ledgerd needs --state",
        ("migrate", "--state", "s"): "migrate needs --migrations",
    }
    for args, message in cases.items():
        result = run_ledgerd(ledgerd, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


# --- readiness and migrations --------------------------------------------------------------


def test_ready_is_503_until_migrate_runs_then_200_without_a_restart(ledgerd: Path, service: Service) -> None:
    status, _, body = fetch(f"{service.url}/ready")
    assert (status, body) == (503, f"schema 0 < required {REQUIRED_SCHEMA}\n".encode())
    assert answer(f"{service.url}/live") == (200, b"live\n")

    first = migrate(ledgerd, service.state_dir)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "applying 001_init.sql",
        "applying 002_entries.sql",
        "schema version 2 (was 0): applied 2 migration(s)",
    ]
    assert (service.state_dir / "schema_version").read_text() == "2\n"
    assert answer(f"{service.url}/ready") == (200, b"ready\n")

    again = migrate(ledgerd, service.state_dir)
    assert (again.returncode, again.stdout) == (0, "schema version 2: up to date\n")
    assert (service.state_dir / "schema_version").read_text() == "2\n"
    assert fetch(f"{service.url}/ready")[0] == 200
    assert sorted(p.name for p in service.state_dir.iterdir()) == ["entries.log", "schema_version"]


def test_migrate_stops_at_an_unreadable_migration(ledgerd: Path, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations)
    # A dangling link is listed but cannot be read (mode bits would not stop root).
    (migrations / "003_missing.sql").symlink_to(tmp_path / "nowhere.sql")
    state = tmp_path / "state"

    result = migrate(ledgerd, state, migrations)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("ledgerd: cannot read migration "), line
    assert "003_missing.sql" in line
    # The migrations before it were applied and recorded.
    assert (state / "schema_version").read_text() == "2\n"


def test_migrate_fails_when_the_state_directory_cannot_be_written(ledgerd: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = migrate(ledgerd, blocker / "state")
    assert result.returncode == 1
    assert result.stderr.startswith(f"ledgerd: cannot create state directory {blocker / 'state'}: "), result.stderr


def test_a_release_with_incomplete_migrations_refuses_to_start(ledgerd: Path, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(MIGRATIONS / "001_init.sql", migrations)
    port = free_port()
    result = run_ledgerd(
        ledgerd, "--listen", f"127.0.0.1:{port}", "--state", tmp_path / "state", "--migrations", migrations
    )
    assert result.returncode == 1
    assert f"{migrations} holds migrations up to 1, but this build needs schema 2" in result.stderr


# --- endpoints -----------------------------------------------------------------------------


def test_entries_are_appended_to_the_state_and_survive_a_restart(
    ledgerd: Path, migrated: Service, tmp_path: Path
) -> None:
    for number, text in enumerate(["coffee 3.20", "rent 900"], start=1):
        status, headers, body = fetch(f"{migrated.url}/entries", method="POST", data=f"{text}\n".encode())
        assert (status, json.loads(body)) == (201, {"entry": number})
        assert headers["Content-Type"] == "application/json"
    lines = (migrated.state_dir / "entries.log").read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["coffee 3.20", "rent 900"]

    assert fetch(f"{migrated.url}/entries", method="POST", data=b"two\nlines")[0] == 400
    status, headers, _ = fetch(f"{migrated.url}/entries")
    assert (status, headers["Allow"]) == (405, "POST")

    summary = {"name": NAME, "version": "0.1.0", "entries": 2, "schema_version": 2, "required_schema": 2}
    assert json.loads(fetch(f"{migrated.url}/")[2]) == summary

    migrated.process.send_signal(signal.SIGTERM)
    assert migrated.process.wait(timeout=2) == 0, migrated.log()
    restarted = start_service(ledgerd, migrated.state_dir)
    try:
        assert json.loads(fetch(f"{restarted.url}/")[2])["entries"] == 2
        assert fetch(f"{restarted.url}/ready")[0] == 200
    finally:
        stop(restarted)


def test_request_bodies_keep_the_connection_usable(migrated: Service) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", migrated.port, timeout=5)
    try:
        connection.request("POST", "/entries", body=b"tea 2.10")
        first = connection.getresponse()
        assert (first.status, json.loads(first.read())) == (201, {"entry": 1})
        first_socket = connection.sock
        connection.request("GET", "/")
        second = connection.getresponse()
        assert json.loads(second.read())["entries"] == 1
        assert connection.sock is first_socket
    finally:
        connection.close()

    chunked = raw_exchange(
        migrated.port,
        b"POST /entries HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    assert chunked.startswith(b"HTTP/1.1 411 Length Required\r\n")
    assert b"\r\nConnection: close\r\n" in chunked
    too_large = fetch(f"{migrated.url}/entries", method="POST", data=b"x" * (64 * 1024 + 1))
    assert too_large[0] == 413


def test_version_and_config_hash(service: Service) -> None:
    status, headers, body = fetch(f"{service.url}/version")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == {"name": "ledger-service", "version": "0.1.0", "build_id": BUILD_ID}

    status, _, body = fetch(f"{service.url}/config-hash")
    assert (status, body) == (200, f"{fnv1a_64(SECRET.encode()):016x}\n".encode())
    assert SECRET.encode() not in body


def test_metrics_have_their_own_names_and_zero_series_from_the_start(service: Service) -> None:
    status, headers, body = fetch(f"{service.url}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    first = body.decode()
    for route in ROUTES:
        assert metric_value(first, responses("2xx", route)) == 0, route
        assert metric_value(first, responses("5xx", route)) == 0, route
    assert metric_value(first, f'ledger_build_info{{version="0.1.0",build_id="{BUILD_ID}"}}') == 1
    assert metric_value(first, "ledger_http_request_duration_seconds_count") == 0
    assert "# TYPE ledger_http_request_duration_seconds summary" in first
    assert "hello_" not in first

    assert fetch(f"{service.url}/ready")[0] == 503
    assert fetch(f"{service.url}/live")[0] == 200
    assert fetch(f"{service.url}/nope")[0] == 404
    second = fetch(f"{service.url}/metrics")[2].decode()
    assert metric_value(second, responses("5xx", "/ready")) == 1
    assert metric_value(second, responses("2xx", "/live")) == 1
    assert metric_value(second, responses("4xx", "other")) == 1
    # The first scrape and the three requests since, each counted once it was answered.
    assert metric_value(second, responses("2xx", "/metrics")) == 1
    assert metric_value(second, "ledger_http_request_duration_seconds_count") == 4
    duration_sum = metric_value(second, "ledger_http_request_duration_seconds_sum")
    assert duration_sum is not None and 0 < duration_sum < 5


def test_start_line_and_one_log_line_per_request(service: Service) -> None:
    fetch(f"{service.url}/live")
    fetch(f"{service.url}/no/such/path?x=1")
    log = text_holding(service.log_path, "/no/such/path")
    assert re.search(rf"^ledgerd 0\.1\.0 listening on 127\.0\.0\.1:{service.port}$", log, re.MULTILINE), log
    assert re.search(r"^GET /live 200 \d+\.\d{3}ms$", log, re.MULTILINE), log
    assert re.search(r"^GET /no/such/path\?x=1 404 \d+\.\d{3}ms$", log, re.MULTILINE), log


# --- lifecycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_service_promptly_with_status_0(ledgerd: Path, tmp_path: Path, signum: signal.Signals) -> None:
    running = start_service(ledgerd, tmp_path / "state")
    # An idle kept-alive connection must not hold up the shutdown.
    idle = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    try:
        idle.request("GET", "/live")
        assert idle.getresponse().read() == b"live\n"

        running.process.send_signal(signum)
        assert running.process.wait(timeout=2) == 0, running.log()
    finally:
        idle.close()
        stop(running)
    assert running.log().rstrip().endswith("ledgerd stopped")


def test_failed_starts_exit_with_status_1(ledgerd: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = run_ledgerd(ledgerd, "--listen", f"127.0.0.1:{free_port()}", "--state", blocker / "state")
    assert unwritable.returncode == 1
    assert "cannot create state directory" in unwritable.stderr

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_ledgerd(ledgerd, "--listen", f"127.0.0.1:{port}", "--state", tmp_path / "state")
    assert in_use.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in in_use.stderr


# --- the release bundle --------------------------------------------------------------------


def test_bundle_holds_binary_migrations_and_version_and_deploys(
    ledgerd: Path, target_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "ledger.tar.gz"
    # The session's target directory and build id: cargo finds the binary up to date.
    result = subprocess.run(
        [str(CRATE_DIR / "make-bundle.sh"), str(bundle)],
        env={**cargo_env(target_dir), "CARGO": find_cargo()},
        capture_output=True,
        text=True,
        timeout=CARGO_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    with tarfile.open(bundle, "r:gz") as archive:
        members = {member.name: member for member in archive.getmembers()}
        assert {name.split("/")[0] for name in members} == {"ledgerd", "migrations", "VERSION"}
        assert sorted(members) == [
            "VERSION",
            "ledgerd",
            "migrations",
            "migrations/001_init.sql",
            "migrations/002_entries.sql",
        ]
        assert members["ledgerd"].isfile() and members["ledgerd"].mode == 0o755
        assert members["migrations"].isdir()
        version_file = archive.extractfile("VERSION")
        assert version_file is not None and version_file.read() == b"0.1.0\n"
        archive.extractall(tmp_path / "release", filter="data")

    # The deploy an environment file describes: the hook, then the start, from the bundle alone.
    release = tmp_path / "release"
    assert run_ledgerd(release / "ledgerd", "--version").stdout == "ledgerd 0.1.0\n"
    state = tmp_path / "data"
    hook = migrate(release / "ledgerd", state, release / "migrations")
    assert hook.returncode == 0, hook.stderr
    running = start_service(release / "ledgerd", state, migrations=release / "migrations")
    try:
        assert answer(f"{running.url}/ready") == (200, b"ready\n")
        assert json.loads(fetch(f"{running.url}/version")[2])["build_id"] == BUILD_ID
    finally:
        stop(running)


def test_bundle_script_usage_errors() -> None:
    for args, message in [((), "missing OUT.tar.gz"), (("out.zip",), "must end in .tar.gz")]:
        result = subprocess.run(
            [str(CRATE_DIR / "make-bundle.sh"), *args], capture_output=True, text=True, timeout=10, check=False
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr


# --- failure drills ------------------------------------------------------------------------


def test_broken_build_fails_readiness_even_when_migrated(broken_ledgerd: Path, tmp_path: Path) -> None:
    assert migrate(broken_ledgerd, tmp_path / "state").returncode == 0
    running = start_service(broken_ledgerd, tmp_path / "state")
    try:
        assert answer(f"{running.url}/ready") == (500, b"broken\n")
        assert fetch(f"{running.url}/live")[0] == 200
    finally:
        stop(running)


def test_panic_build_crashes_after_binding_with_the_cause_on_stderr(panic_ledgerd: Path, tmp_path: Path) -> None:
    result = run_ledgerd(panic_ledgerd, "--listen", "127.0.0.1:0", "--state", tmp_path / "state")
    # 101 is Rust's status for a panic that reaches main.
    assert result.returncode == 101, result.stderr
    assert "panicked at" in result.stderr
    assert "built with the panic feature: crashing on purpose after binding 127.0.0.1:" in result.stderr
    assert "listening on" not in result.stderr


def test_failmigrate_build_fails_its_hook_without_touching_the_state(failmigrate_ledgerd: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = migrate(failmigrate_ledgerd, state)
    assert result.returncode == 1
    assert "migration failed on purpose" in result.stderr
    assert not state.exists()
