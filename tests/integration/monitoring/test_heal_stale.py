"""The heal loop does not fight the operator, on real local hosts (the reported incident).

v1 then v2 are deployed, monitoring runs, `orchestrate heal serve` listens. A broken build
(`/healthz` answers 500) fails its gate: the deploy restores v2 on every host and exits 3.
Meanwhile the gate's 500s made HighErrorRate (rollback) and HealthFailing (restart) fire, and
the heal server waited for the lock the deploy held. Once it gets the lock it must decide on the
present: the hosts were moved since (restored), the alerts' windows still cover the broken
release, and v2 is what the failed deploy left serving -- nothing is remediated. An operator's
`rollback --to v2` issued right after the failed deploy waits for the lock instead of being
refused as busy, and the fleet is still on v2 once the stale alerts are over (the watch below).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import pytest

from orchestrator.config.types import parse_duration
from tests.support.cli import orchestrate
from tests.support.net import free_port, http_get

from .test_heal_e2e import current_release, heal_entries, heal_server, wait_all_up

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.e2e, pytest.mark.slow]

FleetEnv = Any
Builds = Any  # tests/integration/conftest.py

# How long the fleet is watched after the operator's rollback. A remediation comes only from an
# alert notification, so the watch lasts until no alert is pending or firing in Prometheus and the
# heal server has decided on everything it received, and then QUIET_S longer (Prometheus sends a
# resolved alert at its next evaluation, Alertmanager passes it on within its group_interval: both
# under a second in dev). It never ends before the environment's healing.throttle (dev: 30 s), which
# is also Alertmanager's repeat_interval: an alert still firing would have been sent again by then.
# The stale alerts end about 20 s after the rollback (their 20 s rate window), so the watch takes
# about 30 s instead of the fixed minute it used to; it never takes longer than that minute
# (WATCH_MAX_S), as before when an alert outlives it.
WATCH_MAX_S = 60.0
QUIET_S = 10.0


def quiet(fleet: FleetEnv, heal_port: int) -> bool:
    """No alert pending or firing on the monitoring host, and nothing queued in the heal server."""
    monitor = fleet.group("monitoring")[0]
    query = urllib.parse.urlencode({"query": "ALERTS"})
    status, body = http_get(f"http://{monitor.address}:9090/api/v1/query?{query}", network=fleet.network, timeout=5)
    assert status == 200, body
    if json.loads(body)["data"]["result"]:
        return False
    status, body = http_get(f"http://127.0.0.1:{heal_port}/healthz")
    return status == 200 and json.loads(body)["queued"] == 0


def test_a_failed_deploy_is_not_rolled_back_further_by_its_stale_alerts(fleet_factory: Any,
                                                                        hello_builds: Builds) -> None:
    heal_port = free_port()
    fleet: FleetEnv = fleet_factory(app_count=2, monitoring_count=1,
                                    overrides={"healing": {"listen": f"127.0.0.1:{heal_port}"}})
    apps = fleet.group("app")
    v2 = hello_builds.v2.release_id
    for build in (hello_builds.v1, hello_builds.v2):
        code, result, err = orchestrate(fleet.project_dir, "deploy", fleet.env_name, "--release", str(build.binary))
        assert code == 0, err
        assert result["release"] == build.release_id
    code, _, err = orchestrate(fleet.project_dir, "monitoring", "deploy", fleet.env_name)
    assert code == 0, err

    with heal_server(fleet, heal_port) as summary:
        wait_all_up(fleet)
        code, failed, err = orchestrate(fleet.project_dir, "deploy", fleet.env_name, "--release",
                                        str(hello_builds.broken.binary))
        assert code == 3, err  # the gate failed and every host is back on v2
        assert {current_release(fleet, h) for h in apps} == {v2}

        # the operator's own rollback right after: it waits for the lock (the heal server may be
        # deciding on the queued alerts), it is not refused as busy (exit 75)
        started = time.monotonic()
        code, rolled, err = orchestrate(fleet.project_dir, "rollback", fleet.env_name, "--to", v2)
        assert code == 0, err
        assert rolled["release"] == v2 and time.monotonic() - started < 120

        # no remediation moves the fleet while the stale alerts last, nor after them (see WATCH_MAX_S)
        watch_min = parse_duration(fleet.loaded.env.healing.throttle)
        assert watch_min < WATCH_MAX_S
        watch_started = time.monotonic()
        quiet_since: float | None = None
        while True:
            assert {current_release(fleet, h) for h in apps} == {v2}
            now = time.monotonic()
            if not quiet(fleet, heal_port):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            watched = now - watch_started
            if watched >= WATCH_MAX_S or (
                    watched >= watch_min and quiet_since is not None and now - quiet_since >= QUIET_S):
                break
            time.sleep(2)
        assert {current_release(fleet, h) for h in apps} == {v2}
        assert http_get(f"http://127.0.0.1:{heal_port}/healthz")[0] == 200

    entries = heal_entries(fleet)
    chain = [(e.outcome, e.details.get("alertname"), e.details.get("host"), e.details.get("drop")) for e in entries]
    stale = [e for e in entries if e.outcome == "received"
             and e.details.get("alertname") in ("HighErrorRate", "HealthFailing")]
    assert stale, f"no alert fired during the broken release's gate, so nothing was shown: {chain}"
    assert not [e for e in entries if e.outcome == "acted"], chain
    dropped = [e for e in entries if e.outcome == "dropped"]
    assert {e.details["alertname"] for e in dropped} & {"HighErrorRate", "HealthFailing"}, chain
    assert {e.details["drop"] for e in dropped} <= {"host-moved", "window-covers-move", "past-floor", "resolved"}, chain
    assert all(e.details["why"] for e in dropped)
    assert summary["counts"].get("acted", 0) == 0, summary
    assert failed["release"] == hello_builds.broken.release_id
