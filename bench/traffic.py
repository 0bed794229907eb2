"""Blue-green switch-back time, and failed requests during a canary rollback, under real load.

    .venv/bin/python bench/traffic.py [--repeat 3] [--rate 50] [--hold 3] [--json FILE]

Boots a throwaway fleet of 3 app hosts and 1 HAProxy host, deploys a good release behind the
load balancer and keeps a bounded load (--rate requests/s) running through it. Then, --repeat
times: a blue-green release of another build followed by the switch back (what `orchestrate
rollback` does after it): printed are the time of the weight change (admin socket over SSH) and
the wall time of the whole switch-back call (and once of `orchestrate rollback` as a
command), plus the requests lost during switch and switch
back. Finally a canary-traffic release of a `flaky` build (30% of / answer 500): printed are the
step at which it was rolled back, the gate's measured values and the requests that failed.
Runs as root. With --json FILE the figures are also written there (keys: see `figures` below).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import repo_root  # noqa: F401 - first: the repository root on sys.path, for tests.support

from orchestrator.fleet.guard import own_network
from orchestrator.release.hosts import DeployRequest, deploy
from orchestrator.release.traffic import TrafficGateFailed, TrafficRequest, blue_green, canary_traffic, switch_back
from orchestrator.traffic.lb import configure_lb, lb_url
from orchestrator.traffic.loadgen import LoadGenerator, LoadSpec
from tests.support.builds import build_version
from tests.support.cli import run_orchestrate
from tests.support.fleet import TRAFFIC_OVERRIDES, FleetFactory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="traffic-bench-") as tmp:
        base = Path(tmp)
        v1, v2 = build_version(base, "v1", "0.1.0"), build_version(base, "v2", "0.2.0")
        flaky = build_version(base, "flaky", "0.4.0", "flaky")
        factory = FleetFactory("traffic-bench")
        try:
            fleet = factory.boot(app_count=3, lb_count=1, overrides=TRAFFIC_OVERRIDES)
            loaded = fleet.loaded
            deploy(loaded, DeployRequest(release_path=v1))
            configure_lb(loaded)
            spec = LoadSpec(url=lb_url(loaded), requests=int(args.rate * 3600), duration=3600,
                            concurrency=4, rate=args.rate)
            socket_times: list[float] = []
            call_times: list[float] = []
            with LoadGenerator(spec, network=own_network(loaded)) as gen:
                time.sleep(1)
                for _ in range(args.repeat):
                    blue_green(loaded, TrafficRequest(deploy=DeployRequest(release_path=v2), strategy="blue-green"))
                    time.sleep(1)
                    started = time.monotonic()
                    result = switch_back(loaded)
                    call_times.append(time.monotonic() - started)
                    socket_times.append(result.switch_seconds)
                    time.sleep(1)
                # once more through the CLI, as an operator runs it: `orchestrate rollback ENV`
                blue_green(loaded, TrafficRequest(deploy=DeployRequest(release_path=v2), strategy="blue-green"))
                time.sleep(1)
                started = time.monotonic()
                rolled = run_orchestrate(fleet.project_dir, "rollback", fleet.env_name, "--json", timeout=120)
                cli_seconds = time.monotonic() - started
                if rolled.returncode != 0:
                    raise SystemExit(f"orchestrate rollback exited {rolled.returncode}: {rolled.stderr[-1500:]}")
                time.sleep(1)
                lost_blue_green = gen.report.failed
                sent_blue_green = gen.report.total
                mark = gen.now()
                try:
                    canary_traffic(loaded, TrafficRequest(deploy=DeployRequest(release_path=flaky),
                                                          strategy="canary-traffic", hold=args.hold))
                    print("canary rollback: the flaky release was promoted (gate did not trip)")
                    return 1
                except TrafficGateFailed as exc:
                    decision = exc.result.decisions[-1]
                done = gen.now()
                time.sleep(1)
            report = gen.report
            during = [s for s in report.samples if mark <= s.started <= done + 1]
            failed = sum(1 for s in during if s.failed)
            print(f"blue-green switch back ({args.repeat}x, load {args.rate:.0f} req/s): weight change "
                  f"median {statistics.median(socket_times):.3f} s (max {max(socket_times):.3f}), whole call "
                  f"median {statistics.median(call_times):.3f} s (max {max(call_times):.3f}); "
                  f"{lost_blue_green} of {sent_blue_green} requests failed over the switches")
            print(f"`orchestrate rollback` (switch back as a command, process start and journal included): "
                  f"{cli_seconds:.3f} s")
            print(f"canary rollback: rolled back at {decision.step}% after a {args.hold:.0f} s hold "
                  f"(gate: {decision.requests} requests on the canary, {decision.failed} failed, error ratio "
                  f"{decision.error_ratio:.3f}, mean latency {decision.latency_ms:.0f} ms); "
                  f"{failed} of {len(during)} requests failed during the canary release")
            if args.json is not None:
                figures = {
                    "repeat": args.repeat, "rate_rps": args.rate, "hold_s": args.hold,
                    "switch_back_s_median": round(statistics.median(socket_times), 3),
                    "switch_back_s_max": round(max(socket_times), 3),
                    "switch_back_call_s_median": round(statistics.median(call_times), 3),
                    "switch_back_call_s_max": round(max(call_times), 3),
                    "switch_back_cli_s": round(cli_seconds, 3),
                    "blue_green_lost_requests": lost_blue_green,
                    "blue_green_requests": sent_blue_green,
                    "canary_rollback_step": decision.step,
                    "canary_failed_requests": failed,
                    "canary_requests": len(during),
                    "canary_gate": {"source": decision.source, "requests": decision.requests,
                                    "failed": decision.failed, "error_ratio": round(decision.error_ratio, 4),
                                    "latency_ms": round(decision.latency_ms, 1)},
                }
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(figures, indent=2) + "\n")
                print(f"figures written to {args.json}")
        finally:
            factory.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
