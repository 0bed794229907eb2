"""Boot 20 local hosts from the cached image, report the seconds until all are ready, destroy them.

    .venv/bin/python bench/boot_hosts.py [--hosts 20] [--goal 5]

"Ready" is what every other part waits for: systemd in the host says running/degraded and
sshd answers on port 22. The image is built first if it is not cached yet (not timed).
Runs as root; uses a throwaway project dir, bridge and a reserved 10.214.X.0/24 subnet.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import repo_root  # noqa: F401 - first: the repository root on sys.path, for tests.support

from orchestrator.fleet.local.fleet import LocalFleet, plan_hosts
from orchestrator.fleet.local.image import ImageStore
from orchestrator.fleet.local.network import FleetNetwork
from orchestrator.fleet.local.supervisor import cgroup_dirs
from tests.support.molecule_hosts import release_subnet, reserve_subnet


def host_cpu_seconds(name: str) -> float:
    """CPU used so far by everything in a host's cgroup (container and launcher)."""
    stat = cgroup_dirs(name)[1] / "cpu.stat"
    for line in stat.read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1]) / 1e6
    return 0.0


def measure(count: int) -> dict[str, float | int]:
    """Boot `count` hosts of a throwaway fleet from the cached image, time it, destroy them."""
    ImageStore().ensure()  # not timed: cached after the first run
    tag = "bh" + secrets.token_hex(3)
    # reserved like the tests' and Molecule's fleets, so a benchmark never takes their subnet
    subnet, marker = reserve_subnet()
    network = FleetNetwork(tag, subnet)
    with tempfile.TemporaryDirectory(prefix="boot-hosts-") as tmp:
        project = Path(tmp)
        fleet = LocalFleet(network, project / ".orchestrate" / "bench" / "hosts", project)
        specs = plan_hosts(tag, network, app_count=count)
        load_before = float(Path("/proc/loadavg").read_text().split()[0])
        try:
            started = time.monotonic()
            fleet.ensure_all(specs, timeout=120)
            elapsed = time.monotonic() - started
            running = sum(fleet.state(s.name) == "running" for s in specs)
            cpu = sum(host_cpu_seconds(s.name) for s in specs)
            destroy_started = time.monotonic()
        finally:
            fleet.destroy_all()
            release_subnet(marker)
        destroyed = time.monotonic() - destroy_started
    return {"hosts": count, "ready_s": elapsed, "running": running, "host_cpu_s": cpu,
            "destroy_s": destroyed, "load_before": load_before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--goal", type=float, default=5.0, help="seconds all hosts must be ready in")
    args = parser.parse_args()

    found = measure(args.hosts)
    elapsed, running = float(found["ready_s"]), int(found["running"])
    verdict = "met" if elapsed < args.goal and running == args.hosts else "not met"
    print(f"{args.hosts} hosts ready in {elapsed:.2f} s ({running} running); "
          f"goal: all {args.hosts} ready in under {args.goal:g} s: {verdict}")
    print(f"hosts used {found['host_cpu_s']:.1f} CPU seconds to boot; machine load average before: "
          f"{found['load_before']}")
    print(f"destroyed in {found['destroy_s']:.2f} s")
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
