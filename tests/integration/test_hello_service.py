"""Integration tests of examples/hello-service: build it with cargo, run the binary, talk HTTP.

Nothing is mocked: each test starts the real binary on a free loopback port with its own data
directory and checks what it answers, what it writes and how it exits.
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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path

import pytest

from tests.support.output import text_holding

pytestmark = pytest.mark.integration

CRATE_DIR = Path(__file__).resolve().parents[2] / "examples" / "hello-service"
BUILD_ID = "itest-build-42"
GREETING = "hello from the integration test"
SECRET = "integration-secret-7f3a9c"
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


def run_cargo(
    args: Sequence[str], target_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs cargo offline with the committed Cargo.lock; fails the test when cargo fails."""
    argv = [find_cargo(), *args, "--offline", "--locked"]
    result = subprocess.run(
        argv,
        cwd=CRATE_DIR,
        env={**os.environ, "CARGO_TARGET_DIR": str(target_dir), **(env or {})},
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
    result = run_cargo(args, target_dir, env={"HELLO_BUILD_ID": BUILD_ID})
    assert "warning" not in result.stderr, result.stderr
    binary = target_dir / "release" / "hello-service"
    assert binary.is_file(), f"cargo did not produce {binary}"
    return binary


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
    data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()


def start_service(binary: Path, workdir: Path) -> Service:
    """Starts `binary` on a free loopback port, its data directory not yet existing."""
    port = free_port()
    data_dir = workdir / "state" / "data"
    log_path = workdir / "service.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HELLO_GREETING": GREETING,
        "HELLO_SECRET": SECRET,
    }
    argv = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--data-dir", str(data_dir)]
    # Request logs go to a file: a pipe nobody reads would fill up and block the service.
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    service = Service(process, port, data_dir, log_path)
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


def raw_exchange(port: int, request: bytes, timeout: float = 2.0) -> bytes:
    """Sends `request` and returns everything the service sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def metric_value(exposition: str, series: str) -> float | None:
    """Value of one series, e.g. 'hello_requests_total{path="/",code="200"}'."""
    for line in exposition.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def fnv1a_64(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hello-target")


@pytest.fixture(scope="session")
def hello_binary(target_dir: Path) -> Path:
    return build_release(target_dir)


@pytest.fixture(scope="session")
def broken_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A target directory of its own: the feature build would replace target/release/hello-service.
    return build_release(tmp_path_factory.mktemp("hello-target-broken"), features=["broken"])


@pytest.fixture(scope="session")
def panic_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_release(tmp_path_factory.mktemp("hello-target-panic"), features=["panic"])


@pytest.fixture
def service(hello_binary: Path, tmp_path: Path) -> Iterator[Service]:
    running = start_service(hello_binary, tmp_path)
    yield running
    stop(running)


# --- tests ---------------------------------------------------------------------------------


def test_crate_unit_tests_pass(target_dir: Path) -> None:
    result = run_cargo(["test"], target_dir)
    assert re.search(r"test result: ok\. [1-9]\d* passed; 0 failed", result.stdout), result.stdout


def test_healthz_answers_ok(service: Service) -> None:
    status, headers, body = fetch(f"{service.url}/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["Content-Type"].startswith("text/plain")


def test_version_reports_package_and_build(service: Service) -> None:
    status, headers, body = fetch(f"{service.url}/version")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"name": "hello-service", "version": "0.1.0", "build_id": BUILD_ID}


def test_root_serves_the_configured_greeting(service: Service) -> None:
    status, _, body = fetch(f"{service.url}/")
    assert (status, body) == (200, f"{GREETING}\n".encode())


def test_unknown_path_is_404(service: Service) -> None:
    status, _, _ = fetch(f"{service.url}/no/such/path")
    assert status == 404


def test_methods_other_than_get_are_405(service: Service) -> None:
    status, headers, _ = fetch(f"{service.url}/healthz", method="POST", data=b"x=1")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert fetch(f"{service.url}/", method="DELETE")[0] == 405


def test_metrics_expose_build_info_and_growing_counters(service: Service) -> None:
    healthz_ok = 'hello_requests_total{path="/healthz",code="200"}'
    assert fetch(f"{service.url}/healthz")[0] == 200

    status, headers, body = fetch(f"{service.url}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    first = body.decode()
    assert metric_value(first, f'hello_build_info{{version="0.1.0",build_id="{BUILD_ID}"}}') == 1
    assert metric_value(first, healthz_ok) == 1
    assert (metric_value(first, "hello_uptime_seconds") or -1) >= 0
    start_time = metric_value(first, "process_start_time_seconds")
    assert start_time is not None and abs(start_time - time.time()) < 60

    fetch(f"{service.url}/healthz")
    fetch(f"{service.url}/healthz")
    second = fetch(f"{service.url}/metrics")[2].decode()
    assert metric_value(second, healthz_ok) == 3
    assert metric_value(second, 'hello_requests_total{path="/metrics",code="200"}') == 1


def test_config_hash_proves_the_secret_arrived_without_revealing_it(service: Service) -> None:
    status, _, body = fetch(f"{service.url}/config-hash")
    assert status == 200
    assert body.decode() == f"{fnv1a_64(SECRET.encode()):016x}\n"
    assert SECRET.encode() not in body


def test_data_dir_is_created_with_the_start_time(service: Service) -> None:
    started_at = (service.data_dir / "started_at").read_text().strip()
    when = datetime.fromisoformat(started_at)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)


def test_each_request_is_logged_on_one_line(service: Service) -> None:
    fetch(f"{service.url}/no/such/path")
    fetch(f"{service.url}/healthz")
    log = text_holding(service.log_path, "GET /healthz ")
    assert re.search(r"^GET /no/such/path 404 \d+\.\d{3}ms$", log, re.MULTILINE), log
    assert re.search(r"^GET /healthz 200 \d+\.\d{3}ms$", log, re.MULTILINE), log


def test_keep_alive_reuses_the_connection_until_close_is_asked(service: Service) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    try:
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b"ok\n"
        first_socket = connection.sock
        connection.request("GET", "/version")
        second = connection.getresponse()
        assert (second.status, json.loads(second.read())["version"]) == (200, "0.1.0")
        assert connection.sock is first_socket

        connection.request("GET", "/healthz", headers={"Connection": "close"})
        response = connection.getresponse()
        assert response.getheader("Connection") == "close"
        assert response.read() == b"ok\n"
    finally:
        connection.close()

    # The service itself closes: reading to the end of the stream terminates.
    reply = raw_exchange(service.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"\r\n\r\nok\n")


def test_http10_gets_content_length_and_a_closed_connection(service: Service) -> None:
    reply = raw_exchange(service.port, b"GET /version HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\r\nContent-Length: {len(body)}\r\n".encode() in head + b"\r\n"
    assert json.loads(body)["version"] == "0.1.0"


def test_malformed_request_is_400(service: Service) -> None:
    reply = raw_exchange(service.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_service_promptly_with_status_0(
    hello_binary: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    running = start_service(hello_binary, tmp_path)
    # An idle kept-alive connection must not hold up the shutdown.
    idle = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    try:
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() == b"ok\n"

        running.process.send_signal(signum)
        assert running.process.wait(timeout=2) == 0, running.log()
    finally:
        idle.close()
        stop(running)
    assert "stopped" in running.log()


def test_broken_build_fails_its_health_check(broken_binary: Path, tmp_path: Path) -> None:
    running = start_service(broken_binary, tmp_path)
    try:
        status, _, body = fetch(f"{running.url}/healthz")
        assert (status, body) == (500, b"broken\n")
        status, _, body = fetch(f"{running.url}/version")
        assert status == 200
        assert json.loads(body)["version"] == "0.1.0"
    finally:
        stop(running)


def test_panic_build_crashes_after_binding_with_the_cause_on_stderr(panic_binary: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(panic_binary), "--bind", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path / "data")],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_BACKTRACE": "0"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    # 101 is Rust's status for a panic that reaches main.
    assert result.returncode == 101, result.stderr
    assert "panicked at" in result.stderr
    assert "built with the panic feature: crashing on purpose after binding 127.0.0.1:0" in result.stderr
    # The start did not succeed, so it left no start time.
    assert not (tmp_path / "data" / "started_at").exists()


def test_help_and_usage_errors(hello_binary: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(hello_binary), *args], capture_output=True, text=True, timeout=10, check=False)

    shown = run("--help")
    assert shown.returncode == 0
    assert "--port" in shown.stdout and "HELLO_PORT" in shown.stdout

    bad_port = run("--port", "not-a-port")
    assert bad_port.returncode == 2
    assert "not-a-port" in bad_port.stderr

    unknown = run("--frobnicate")
    assert unknown.returncode == 2
    assert "--frobnicate" in unknown.stderr


def test_port_in_use_fails_with_status_1(hello_binary: Path, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(hello_binary), "--bind", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    # A start that failed leaves no start time behind.
    assert not (tmp_path / "data" / "started_at").exists()
