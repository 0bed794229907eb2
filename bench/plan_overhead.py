"""Benchmark: `orchestrate plan prod` wall time against the raw `terraform plan` on the same root.

Starts a moto server on a free loopback port, copies the project into a temporary directory,
bootstraps and provisions prod there (so that the plans refresh a real stack of 16 resources),
then runs both commands interleaved (--runs each, default 5) and prints the medians side by
side with the overhead. Goal: the orchestrator adds less than 5 %.

    .venv/bin/python bench/plan_overhead.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
GOAL_PERCENT = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_timed(argv: list[str], *, cwd: Path | None = None,
              ok: tuple[int, ...] = (0,)) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return elapsed, result


def timed(argv: list[str], *, cwd: Path | None = None, ok: tuple[int, ...] = (0,)) -> float:
    return run_timed(argv, cwd=cwd, ok=ok)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (interleaved)")
    args = parser.parse_args()

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workdir = Path(tempfile.mkdtemp(prefix="plan-overhead-"))
    try:
        wait_for(f"{endpoint}/moto-api/")
        os.environ.update({
            "AWS_ACCESS_KEY_ID": "AKIABENCHMARK", "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-1", "AWS_EC2_METADATA_DISABLED": "true",
            "ORCHESTRATE_AWS_ENDPOINT": endpoint,
        })
        project = workdir / "project"
        for part in ("inventories", "terraform"):
            shutil.copytree(REPO / part, project / part)
        orchestrate = [str(VENV_BIN / "orchestrate"), "--project-dir", str(project)]
        print("setting up: bootstrap + provision prod on moto ...", file=sys.stderr)
        timed([*orchestrate, "bootstrap", "prod"])
        timed([*orchestrate, "provision", "prod", "--yes"])

        # The raw run gets the same CLI config and plugin cache the adapter uses, so the only
        # difference is the orchestrator itself (render, init check, -json parsing, summary).
        from orchestrator.config.loader import Project
        from orchestrator.fleet.provision import terraform_for

        tf = terraform_for(Project(project).load("prod"))
        os.environ.update(tf.environment())
        raw = ["terraform", "plan", "-input=false", "-lock-timeout=0s", "-detailed-exitcode",
               f"-out={tf.working_dir / 'raw.tfplan'}"]
        ours = [*orchestrate, "plan", "prod", "--json"]
        timed(raw, cwd=tf.working_dir, ok=(0, 2))  # warm-up of both, not counted
        timed(ours, ok=(0, 4))

        raw_times: list[float] = []
        our_times: list[float] = []
        own_times: list[float] = []  # the orchestrator's own share: wall time minus its terraform time
        for index in range(args.runs):
            raw_times.append(timed(raw, cwd=tf.working_dir, ok=(0, 2)))
            elapsed, result = run_timed(ours, ok=(0, 4))
            our_times.append(elapsed)
            own_times.append(elapsed - float(json.loads(result.stdout)["terraform_seconds"]))
            print(f"run {index + 1}/{args.runs}: terraform plan {raw_times[-1]:.2f} s, "
                  f"orchestrate plan {our_times[-1]:.2f} s", file=sys.stderr)

        raw_median = statistics.median(raw_times)
        our_median = statistics.median(our_times)
        overhead = (our_median - raw_median) / raw_median * 100
        print(f"{'command':<28}{'median s':>10}{'min s':>8}{'max s':>8}")
        print(f"{'terraform plan (raw)':<28}{raw_median:>10.2f}{min(raw_times):>8.2f}{max(raw_times):>8.2f}")
        print(f"{'orchestrate plan prod':<28}{our_median:>10.2f}{min(our_times):>8.2f}{max(our_times):>8.2f}")
        # Each pair ran back to back, so the median of the pairwise differences is less sensitive
        # to load that changes during the run than the difference of the medians.
        paired = statistics.median(ours - raw for ours, raw in zip(our_times, raw_times, strict=True))
        paired_percent = paired / raw_median * 100
        verdict = "met" if overhead < GOAL_PERCENT else "not met"
        print(f"overhead: {overhead:+.1f}% ({our_median - raw_median:+.2f} s); "
              f"median of paired differences {paired:+.2f} s ({paired_percent:+.1f}%); "
              f"goal < {GOAL_PERCENT:g}%: {verdict}")
        own = statistics.median(own_times)
        print(f"orchestrator's own time per plan (wall minus its terraform processes): median {own:.2f} s "
              f"= {own / raw_median * 100:.1f}% of the raw plan")
        print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        return 0
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
