"""Five concurrent `orchestrate up` runs on one environment, each with real work, one at a time.

Every run is forced (all stages run) and they alternate between two releases, so whichever order
they get the lock in, each one that follows a run of the other release switches the hosts.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from datetime import datetime
from typing import Any

import pytest

from orchestrator.pipeline.up import STEPS
from tests.support.cli import spawn_orchestrate

from .helpers import FAST, assert_fleet_on, newest_run, run_detail, runs

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]


def test_concurrent_ups_run_one_at_a_time(unbooted_project: Any, hello_builds: Any) -> None:
    # nothing provisioned yet: whichever run gets the lock first provisions the host, too
    fleet = unbooted_project(app_count=1, monitoring_count=0, overrides=FAST)
    builds = {hello_builds.v1.release_id: "0.1.0", hello_builds.v2.release_id: "0.2.0"}

    def start(build: Any, *extra: str) -> subprocess.Popen[str]:
        return spawn_orchestrate(fleet.project_dir, "up", fleet.env_name, "--release", str(build.binary), "--json",
                                 "--force", *extra)

    order = [hello_builds.v2, hello_builds.v1, hello_builds.v2, hello_builds.v1, hello_builds.v2]
    procs = [start(build) for build in order]
    try:
        # --lock-wait 0 while one of them holds the lock: exit 75 at once, naming the holder. The
        # probes start as soon as a run has begun (a run takes seconds), never in a gap between two.
        deadline = time.monotonic() + 300
        while (holder := newest_run(fleet)) is None or holder[1] != "running":
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.02)
        probes = [start(hello_builds.v1, "--lock-wait", "0") for _ in range(4)]
        busy = [(p.wait(timeout=120), p.communicate()[1]) for p in probes]
        assert newest_run(fleet) == holder, "the holder finished before the probes: they prove nothing"
    finally:
        outcomes = [p.communicate(timeout=900) for p in procs]
    assert [code for code, _ in busy] == [75] * 4, busy
    assert all("lock" in err and "orchestrate up" in err for _, err in busy)
    assert [p.returncode for p in procs] == [0] * 5, [err[-2000:] for _, err in outcomes]
    assert sum("waiting for lock held by" in err for _, err in outcomes) >= 1

    five = sorted(runs(fleet), key=lambda r: r["started"])
    assert len(five) == 5 and all(r["command"] == "up" and r["state"] == "completed" for r in five)
    assert sorted(r["release"] for r in five) == sorted(b.release_id for b in order)
    spans = [(datetime.fromisoformat(r["started"]), datetime.fromisoformat(r["finished"])) for r in five]
    for (_, finished), (started, _) in itertools.pairwise(spans):
        assert finished <= started, spans

    # real work: every stage of every run ran (none skipped as a no-op), and each run whose
    # predecessor (in lock order) deployed the other release switched the host
    previous = None
    for summary in five:
        run = run_detail(fleet, summary["id"])
        assert [s["state"] for s in run["steps"]] == ["completed"] * len(STEPS), run["steps"]
        deploy = next(s for s in run["steps"] if s["name"] == "deploy")["detail"]
        assert deploy["release"] == summary["release"]
        assert deploy["state"] == ("unchanged" if summary["release"] == previous else "deployed"), (summary, deploy)
        previous = summary["release"]
    assert previous is not None
    assert_fleet_on(fleet, builds[previous])
