"""The Prometheus API client: query URLs, reading instant answers, errors that name the host."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.tools.prometheus import PrometheusAPI, PrometheusError, instant_value, query_url, scrape_wait_limit


def test_query_url_encodes_the_promql() -> None:
    url = query_url("http://10.0.0.30:9090/", 'sum(up{job="haproxy"})')
    assert url.startswith("http://10.0.0.30:9090/api/v1/query?query=")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query) == {"query": ['sum(up{job="haproxy"})']}


def test_instant_value_takes_the_first_sample_and_maps_empty_and_nan_to_none() -> None:
    def answer(*values: str) -> dict[str, object]:
        return {"status": "success", "data": {"resultType": "vector",
                                              "result": [{"metric": {}, "value": [1.0, v]} for v in values]}}

    assert instant_value(answer("42.5", "1"), "q") == 42.5
    assert instant_value(answer(), "q") is None
    assert instant_value(answer("NaN"), "q") is None
    assert instant_value(answer("+Inf"), "q") is None
    with pytest.raises(PrometheusError, match=r"mon-1: Prometheus refused up\[: parse error"):
        instant_value({"status": "error", "error": "parse error"}, "up[", host="mon-1")
    with pytest.raises(PrometheusError, match="no sample value"):
        instant_value({"status": "success", "data": {"result": [{"metric": {}}]}}, "q")


def test_scrape_wait_limit_is_three_intervals_and_five_seconds() -> None:
    assert scrape_wait_limit(1.0) == 8.0


class _Handler(BaseHTTPRequestHandler):
    answers: dict[str, object] = {}

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
        body = json.dumps(self.answers.get(query, {"status": "success", "data": {"result": []}})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_query_and_scrape_wait_against_an_http_api(fake_prometheus: str) -> None:
    _Handler.answers = {
        "up": {"status": "success", "data": {"result": [{"metric": {}, "value": [0, "1"]}]}},
        'min(timestamp(up{job="a"}))': {"status": "success", "data": {"result": [{"metric": {}, "value": [0, "200"]}]}},
    }
    api = PrometheusAPI(fake_prometheus, name="mon-1", scrape_interval=0.01)
    assert api.query("up") == 1.0
    assert api.query("absent") is None
    assert api.wait_scraped('job="a"', since=150.0)
    assert not api.wait_scraped('job="a"', since=300.0)  # never scraped that late: gives up


def test_an_unreachable_prometheus_is_an_error_naming_host_and_query() -> None:
    api = PrometheusAPI("http://127.0.0.1:9", name="mon-1", scrape_interval=1, timeout=2)
    with pytest.raises(PrometheusError, match=r"^mon-1: Prometheus query failed \(.*\): up$"):
        api.query("up")
