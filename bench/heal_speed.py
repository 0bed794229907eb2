"""Seconds from killing the service on a host to /healthz answering 200 again, healed by the loop.

    .venv/bin/python bench/heal_speed.py [--rounds 3] [--goal 3]

Boots a throwaway dev-like fleet (3 app hosts + 1 monitoring host, own bridge and a reserved
10.214.X.0/24: the tests' FleetFactory, tests/support/fleet.py),
deploys the example service (`orchestrate deploy`), the monitoring stack (`orchestrate monitoring
deploy`) and runs `orchestrate heal serve`. Each round kills the unit on the next app host with
systemd's own Restart= turned off (`systemctl kill -s KILL`), then polls /healthz every 0.1 s
until it answers 200: Prometheus fires ServiceDown, Alertmanager calls the heal webhook, the
heal server restarts the unit behind its health gate. The dev config is used as shipped except
healing.max_remediations, raised to the number of rounds so the circuit breaker does not stop the
benchmark. Runs as root.
Prints each round, the median and the verdict; writes bench/results/heal_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from repo_root import REPO  # first: it puts the repository root on sys.path, for tests.support

from tests.support.cli import run_orchestrate, spawn_orchestrate
from tests.support.fleet import FleetFactory
from tests.support.net import free_port

EXAMPLE = REPO / "examples" / "hello-service"
BINARY = EXAMPLE / "target" / "release" / "hello-service"
RESULTS = REPO / "bench" / "results" / "heal_speed.json"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status_of(url: str, timeout: float = 1.0) -> int | None:
    try:
        with OPENER.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


#: systemd's own Restart= off for the rest of the host's boot, so only the healing loop can bring it back
NO_RESTART = ("mkdir -p /run/systemd/system/hello.service.d && "
              "printf '[Service]\\nRestart=no\\n' > /run/systemd/system/hello.service.d/no-restart.conf && "
              "systemctl daemon-reload")


def seconds_until_back(url: str, killed: float, limit: float = 120.0) -> float | None:
    """Seconds from `killed` (time.monotonic()) until `url` answered something else than 200 and
    then 200 again; None when that did not happen within `limit` seconds."""
    down = False
    while time.monotonic() - killed < limit:
        if status_of(url) != 200:
            down = True
        elif down:
            return time.monotonic() - killed
        time.sleep(0.1)
    return None


def cli(project: Path, *args: str) -> dict[str, Any]:
    """`orchestrate --project-dir PROJECT ARGS... --json`: its JSON; SystemExit when it fails."""
    proc = run_orchestrate(project, *args, "--json", timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"orchestrate {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return dict(json.loads(proc.stdout)) if proc.stdout.strip() else {}


def wait_quiet(monitor: str, timeout: float = 120) -> None:
    """Until Prometheus sees every target up and no alert is firing or pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with OPENER.open(f"http://{monitor}:9090/api/v1/query?query=min(up)", timeout=3) as response:
                up = json.loads(response.read())["data"]["result"]
            with OPENER.open(f"http://{monitor}:9090/api/v1/query?query=ALERTS", timeout=3) as response:
                alerts = json.loads(response.read())["data"]["result"]
            if up and up[0]["value"][1] == "1" and not alerts:
                return
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise SystemExit("Prometheus did not see a quiet fleet within 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="kills, one app host after the other")
    parser.add_argument("--goal", type=float, default=3.0, help="seconds from kill to healthy (median)")
    args = parser.parse_args()
    if not BINARY.exists():
        raise SystemExit(f"{BINARY} is not built: run `make example` first")

    heal_port = free_port()
    timings: list[float] = []
    factory = FleetFactory(f"bench-{os.getpid()}-heal-speed")
    serve: subprocess.Popen[str] | None = None
    try:
        # dev as shipped, the circuit breaker raised above the number of rounds (not timed)
        fleet = factory.boot(app_count=3, monitoring_count=1, overrides={
            "healing": {"listen": f"127.0.0.1:{heal_port}", "max_remediations": max(args.rounds, 1) + 1}})
        project, loaded = fleet.project_dir, fleet.loaded
        cli(project, "deploy", "dev", "--release", str(BINARY))
        cli(project, "monitoring", "deploy", "dev")
        serve = spawn_orchestrate(project, "heal", "serve", "dev", "--json", stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        apps = fleet.group("app")
        monitor = fleet.group("monitoring")[0]
        for index in range(args.rounds):
            victim = apps[index % len(apps)]
            address = fleet.network.assert_own_address(victim.address)
            wait_quiet(fleet.network.assert_own_address(monitor.address))
            fleet.ssh(victim, NO_RESTART)
            url = f"http://{address}:{loaded.env.service.port}{loaded.env.service.health.path}"
            killed = time.monotonic()
            fleet.ssh(victim, "systemctl kill -s KILL hello.service")
            elapsed = seconds_until_back(url, killed)
            if elapsed is None:
                raise SystemExit(f"round {index + 1}: {victim.name} did not come back within 120 s")
            timings.append(elapsed)
            print(f"round {index + 1}: {victim.name} killed -> healthy in {elapsed:.2f} s", flush=True)
    finally:
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)
        factory.close()
    median = statistics.median(timings)
    verdict = "met" if median < args.goal else "not met"
    print(f"kill -> healthy: median {median:.2f} s over {len(timings)} rounds "
          f"(min {min(timings):.2f}, max {max(timings):.2f}); goal under {args.goal:g} s: {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rounds": timings, "median": median, "goal": args.goal, "verdict": verdict},
                                  indent=2) + "\n")
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
