"""Helpers of the monitoring suites: real Prometheus, Alertmanager and scrape targets started as
processes on loopback (random ports, temporary storage), and Prometheus queries."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import http_get, wait_http

HERE = Path(__file__).resolve().parent


@dataclass
class Processes:
    """Every process a test starts; `stop_all` kills them (process groups) at teardown."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            self.procs.pop(name)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def start_target(processes: Processes, name: str, port: int, kind: str) -> None:
    """Start metrics_target.py on `port` and wait until it answers."""
    processes.start(name, [sys.executable, str(HERE / "metrics_target.py"), str(port), kind])
    wait_http(f"http://127.0.0.1:{port}/metrics", timeout=15)


def prometheus_query(base: str, query: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    assert status == 200, body
    data = json.loads(body)
    return list(data["data"]["result"])
