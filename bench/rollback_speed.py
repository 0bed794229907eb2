"""Time from a failed health gate to every host healthy on the previous release (5 hosts).

    .venv/bin/python bench/rollback_speed.py [--hosts 5] [--repeat 3] [--goal 3]

Boots a throwaway fleet, deploys a good release, then deploys a build whose /healthz answers 500
with the whole fleet in one batch. Each host's rust_release call switches back by itself the
moment its gate fails; the module stamps the failure and the restore (epoch seconds; the hosts
share the controller's clock), so the figure is max(restored) - min(gate failed) over the
fleet, the health gate of the restored release included. Also printed: the wall time of an
explicit `rollback` run (playbooks/rollback.yml, all hosts, health-gated). Runs as root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import repo_root  # noqa: F401 - first: the repository root on sys.path, for tests.support

from orchestrator.release.hosts import DeployRequest, deploy, rollback
from orchestrator.release.results import GateFailedRestored
from tests.support.builds import build_example, build_version, copy_example
from tests.support.fleet import FleetFactory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--goal", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rollback-speed-") as tmp:
        base = Path(tmp)
        good_bin = build_version(base, "good", "0.1.0")
        other_bin = build_example(copy_example(base / "other", "0.2.0", fix_tests=True))
        bad_bin = build_version(base, "bad", "0.1.0", "broken")
        factory = FleetFactory("bench-rollback-speed")
        gate_to_healthy: list[float] = []
        explicit: list[float] = []
        try:
            fleet = factory.boot(app_count=args.hosts, overrides={
                "rollout": {"batch_size": "100%"},
                "service": {"health": {"timeout": "2s", "interval": "100ms"}},
            })
            deploy(fleet.loaded, DeployRequest(release_path=good_bin))
            for _ in range(args.repeat):
                try:
                    deploy(fleet.loaded, DeployRequest(release_path=bad_bin))
                    raise SystemExit("the broken release passed its gate")
                except GateFailedRestored as exc:
                    stamps = [r.result.get("timings", {}) for r in exc.run.run.results_of("rust_release")
                              if r.status == "failed"]
                    failed = min(s["gate_failed"] for s in stamps)
                    restored = max(s["restored"] for s in stamps)
                    gate_to_healthy.append(restored - failed)
                    print(f"gate failed -> {len(stamps)} hosts healthy on the previous release: "
                          f"{restored - failed:.2f} s", file=sys.stderr, flush=True)
            # explicit rollbacks for comparison: each one swaps current and previous
            deploy(fleet.loaded, DeployRequest(release_path=other_bin))
            for _ in range(args.repeat):
                started = time.monotonic()
                rollback(fleet.loaded)
                explicit.append(time.monotonic() - started)
        finally:
            factory.close()

    median = statistics.median(gate_to_healthy)
    print(f"\n{args.hosts} hosts: failed gate -> all healthy on previous: median {median:.2f} s "
          f"(min {min(gate_to_healthy):.2f}, max {max(gate_to_healthy):.2f}); goal < {args.goal:g} s: "
          f"{'met' if median < args.goal else 'NOT met'}")
    print(f"{args.hosts} hosts: `orchestrate rollback` run (ansible-runner, all hosts, gated): "
          f"median {statistics.median(explicit):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
