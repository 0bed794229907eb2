"""A tiny HTTP scrape target for the monitoring integration tests (run as its own process).

`python metrics_target.py PORT service` answers /metrics like examples/hello-service
(hello_requests_total, hello_build_info, hello_uptime_seconds) and /healthz with 200;
`python metrics_target.py PORT node` answers /metrics with a node_exporter-like gauge.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
COUNTS: dict[tuple[str, int], int] = {}


class Handler(BaseHTTPRequestHandler):
    kind = "service"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, "ok\n")
        elif self.path == "/metrics":
            self._send(200, self._metrics())
        else:
            self._send(404, "not found\n")

    def _metrics(self) -> str:
        if self.kind == "node":
            return "# TYPE node_boot_time_seconds gauge\nnode_boot_time_seconds 1.7e9\n"
        lines = ["# TYPE hello_requests_total counter"]
        for (path, code), count in sorted(COUNTS.items()):
            lines.append(f'hello_requests_total{{path="{path}",code="{code}"}} {count}')
        lines += [
            "# TYPE hello_build_info gauge",
            'hello_build_info{version="0.1.0",build_id="itest"} 1',
            "# TYPE hello_uptime_seconds gauge",
            f"hello_uptime_seconds {time.monotonic() - STARTED:.3f}",
        ]
        return "\n".join(lines) + "\n"

    def _send(self, code: int, body: str) -> None:
        path = self.path if self.path in ("/healthz", "/metrics") else "other"
        COUNTS[(path, code)] = COUNTS.get((path, code), 0) + 1
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    port, kind = int(sys.argv[1]), sys.argv[2]
    Handler.kind = kind
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
