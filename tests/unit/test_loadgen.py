"""The bounded load generator against a real HTTP server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.errors import UsageError
from orchestrator.fleet.local.network import FleetNetwork
from orchestrator.traffic.loadgen import LoadGenerator, LoadSpec, check_target


class _Handler(BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with _Handler.lock:
            _Handler.count += 1
            n = _Handler.count
        status = 500 if self.path == "/flaky" and n % 4 == 0 else 200
        body = b"ok\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", f"s{n % 2}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.count = 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_stops_at_the_request_bound_and_records_everything(server: str) -> None:
    report = LoadGenerator(LoadSpec(url=server + "/flaky", requests=40, duration=30, concurrency=4)).run()
    assert report.total == 40
    assert report.failed == 10
    assert report.statuses == {200: 30, 500: 10}
    assert set(report.served_by) == {"s0", "s1"}
    assert 0 < report.latency_quantile(0.5) <= report.latency_quantile(0.99) < 5


def test_stops_at_the_time_bound_and_keeps_the_rate(server: str) -> None:
    started = time.monotonic()
    report = LoadGenerator(LoadSpec(url=server + "/", requests=10_000, duration=1.0, concurrency=2, rate=20)).run()
    elapsed = time.monotonic() - started
    assert elapsed < 3
    assert 15 <= report.total <= 21
    assert report.failed == 0


def test_stop_ends_a_run_early(server: str) -> None:
    with LoadGenerator(LoadSpec(url=server + "/", requests=10_000, duration=60, concurrency=2, rate=50)) as gen:
        time.sleep(0.3)
    assert 5 <= gen.report.total <= 30


def test_connection_errors_count_as_failures() -> None:
    report = LoadGenerator(LoadSpec(url="http://127.0.0.1:9/", requests=3, duration=5, timeout=1)).run()
    assert report.total == 3 and report.failed == 3
    assert all(s.status == 0 and s.error for s in report.samples)


def test_refuses_targets_outside_loopback_and_the_projects_bridge() -> None:
    net = FleetNetwork("otabc", "10.214.7.0/24")
    assert check_target("http://127.0.0.1:8080/x?y=1") == ("127.0.0.1", 8080, "/x?y=1")
    assert check_target("http://10.214.7.13/", net) == ("10.214.7.13", 80, "/")
    for url in ("http://10.214.8.13/", "http://1.1.1.1/", "http://example.com/", "https://127.0.0.1/"):
        with pytest.raises(UsageError):
            check_target(url, net)
    with pytest.raises(UsageError, match="only loopback"):
        check_target("http://10.214.7.13/")
    with pytest.raises(UsageError, match="bridge"):
        check_target("http://10.214.7.1/", net)  # the bridge's own address is no host


def test_bounds_are_validated() -> None:
    for bad in ({"requests": 0}, {"duration": 0}, {"concurrency": 65}, {"rate": 0}, {"timeout": 0}):
        with pytest.raises(UsageError):
            LoadSpec(url="http://127.0.0.1/", **bad)  # type: ignore[arg-type]
