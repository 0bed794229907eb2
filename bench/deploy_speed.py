"""Deploy time on 5 and 20 local hosts: tuned Ansible settings against stock ones, side by side.

    .venv/bin/python bench/deploy_speed.py [--hosts 5,20] [--repeat 3] [--json FILE]

For each fleet size, boots a throwaway fleet (a copy of the project with a unique bridge and
subnet, as the integration tests do), then times whole `deploy` runs through the core
(artifact staging + ansible-runner + the rust_service role + health gates) in two shapes:
"change" (the other of two releases, so every host copies, switches, restarts and probes) and
"no-op" (the same release again). Tuned = forks 20, pipelining, ControlPersist, no implicit
facts; stock = Ansible's defaults (forks 5, facts gathered, no pipelining). Prints the medians
and the ratio; the goal is tuned <= half of stock. Runs as root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import repo_root  # noqa: F401 - first: the repository root on sys.path, for tests.support

from orchestrator.release.hosts import DeployRequest, deploy
from tests.support.builds import build_example, copy_example
from tests.support.fleet import FleetFactory


def timed_deploy(fleet: object, binary: Path, *, tuned: bool) -> float:
    started = time.monotonic()
    run = deploy(fleet.loaded, DeployRequest(release_path=binary, tuned=tuned))  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    if any(h.failed for h in run.hosts):
        raise SystemExit(f"deploy failed: {run.run.summary_line()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="5,20", help="comma-separated fleet sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.hosts.split(",") if s]

    with tempfile.TemporaryDirectory(prefix="deploy-speed-") as tmp:
        base = Path(tmp)
        one = copy_example(base / "one", "0.1.0", fix_tests=False)
        two = copy_example(base / "two", "0.2.0", fix_tests=True)
        binaries = [build_example(one), build_example(two)]
        figures: dict[str, dict[str, float]] = {}
        factory = FleetFactory("bench-deploy-speed")
        try:
            for size in sizes:
                fleet = factory.boot(app_count=size, overrides={"rollout": {"batch_size": "100%"}})
                # first contact (host keys, first release, user, unit) is not what is measured
                timed_deploy(fleet, binaries[0], tuned=True)
                current = 0
                for mode in ("tuned", "stock"):
                    changes, noops = [], []
                    for _ in range(args.repeat):
                        current = 1 - current
                        changes.append(timed_deploy(fleet, binaries[current], tuned=mode == "tuned"))
                        noops.append(timed_deploy(fleet, binaries[current], tuned=mode == "tuned"))
                    figures[f"{size}/{mode}"] = {"change": statistics.median(changes),
                                                 "noop": statistics.median(noops)}
                    print(f"{size:>3} hosts {mode:<5}: change {figures[f'{size}/{mode}']['change']:6.1f} s, "
                          f"no-op {figures[f'{size}/{mode}']['noop']:6.1f} s", file=sys.stderr, flush=True)
                fleet.destroy()
        finally:
            factory.close()

    print(f"\n{'hosts':>5} | {'tuned change':>12} | {'stock change':>12} | {'ratio':>5} | "
          f"{'tuned no-op':>11} | {'stock no-op':>11} | {'ratio':>5}")
    ok = True
    for size in sizes:
        tuned, stock = figures[f"{size}/tuned"], figures[f"{size}/stock"]
        ratio_change = tuned["change"] / stock["change"]
        ratio_noop = tuned["noop"] / stock["noop"]
        ok = ok and ratio_change <= 0.5
        print(f"{size:>5} | {tuned['change']:>10.1f} s | {stock['change']:>10.1f} s | {ratio_change:>5.2f} | "
              f"{tuned['noop']:>9.1f} s | {stock['noop']:>9.1f} s | {ratio_noop:>5.2f}")
    print(f"goal tuned <= 0.5 x stock (change): {'met' if ok else 'NOT met'}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
