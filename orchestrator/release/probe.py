"""The fleet's release state in well under a second: direct, parallel probes instead of a playbook.

Per app host, at the same time: one SSH command reading the `current` and `previous` links, the
unit's state (`systemctl is-active`) and the releases on disk, and one HTTP request to the health
path from the controller, both through the address guard. The answer has the shape of
`orchestrate status ENV --json` (orchestrator.release.results.FleetStatus).

The layout read here is the one roles/rust_service writes: `/opt/<service>/{current,previous}`
symlinks to `releases/<release id>`, and the unit `<service>.service`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import OrchestratorError
from orchestrator.fleet.inventory import Host, app_hosts
from orchestrator.fleet.remote import Connection, HostRun, connection, run_on_hosts
from orchestrator.ids import is_release_id, shown
from orchestrator.release.results import FleetStatus, HostStatus, reported_release
from orchestrator.tools import http

#: seconds an SSH probe may take (connect included) and the health request
SSH_TIMEOUT = 10.0
HEALTH_TIMEOUT = 2.0


@dataclass(frozen=True)
class ServiceLayout:
    """Where the service lives on a host (roles/rust_service's defaults)."""

    base_dir: str
    unit: str
    port: int
    health_path: str

    @classmethod
    def of(cls, loaded: LoadedEnvironment) -> ServiceLayout:
        service = loaded.env.service
        return cls(base_dir=f"/opt/{service.name}", unit=f"{service.name}.service", port=service.port,
                   health_path=service.health.path)


def status_command(layout: ServiceLayout) -> str:
    """The one remote command of a probe: `key=value` lines for current, previous, unit, releases (pure)."""
    base = shlex.quote(layout.base_dir)
    unit = shlex.quote(layout.unit)
    return (
        f"for l in current previous; do printf '%s=%s\\n' \"$l\" \"$(readlink {base}/\"$l\" 2>/dev/null)\"; done; "
        f"printf 'unit=%s\\n' \"$(systemctl is-active {unit} 2>/dev/null)\"; "
        f"printf 'releases=%s\\n' \"$(ls -1tr {base}/releases 2>/dev/null | tr '\\n' ' ')\""
    )


@dataclass(frozen=True)
class ProbedState:
    """What the remote command reported."""

    release: str | None
    previous_release: str | None
    unit: str
    releases: list[str]


def _release_of(link: str) -> str | None:
    link = link.strip().rstrip("/")
    return link.rsplit("/", 1)[-1] or None if link else None


def parse_status(text: str) -> ProbedState:
    """Read the output of `status_command` (pure); missing lines read as nothing deployed."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value
    return ProbedState(
        release=_release_of(values.get("current", "")),
        previous_release=_release_of(values.get("previous", "")),
        unit=values.get("unit", "").strip() or "unknown",
        releases=values.get("releases", "").split(),
    )


def health_url(address: str, layout: ServiceLayout) -> str:
    """The URL of a host's health check as the controller asks it (pure)."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{layout.port}{layout.health_path}"


def host_status(host: Host, run: HostRun, healthy: bool, health_error: str) -> HostStatus:
    """One row of the status from a host's probe results (pure)."""
    if run.exit_code is None or run.error:
        return HostStatus(name=host.name, address=host.address, release=None, previous_release=None,
                          unit="unreachable", healthy=False, error=run.error or "no answer")
    state = parse_status(run.stdout)
    # what a host reports is checked like any input: a current release that is not a release id
    # leaves the host unhealthy (what it runs is unknown); other odd names are only left out
    release, problem = reported_release(host.name, {"release": state.release}, "release")
    previous, previous_problem = reported_release(host.name, {"previous_release": state.previous_release},
                                                  "previous_release")
    releases = [r for r in state.releases if is_release_id(r)]
    others = [shown(r, 40) for r in state.releases if not is_release_id(r)]
    listed_problem = (f"{host.name} listed {', '.join(others)} among its releases, which are not release ids "
                      "(not used)") if others else ""
    gate = "" if healthy or not release else health_error
    return HostStatus(name=host.name, address=host.address, release=release, previous_release=previous,
                      unit=state.unit, healthy=healthy and not problem, releases=releases,
                      error="; ".join(filter(None, [problem, previous_problem, listed_problem, gate])))


def probe_hosts(loaded: LoadedEnvironment, hosts: Sequence[Host], *, conn: Connection | None = None) -> FleetStatus:
    """The status of `hosts` (app hosts of `loaded`), probed in parallel."""
    started = time.monotonic()
    conn = conn or connection(loaded)
    layout = ServiceLayout.of(loaded)
    command = status_command(layout)

    def health(host: Host) -> tuple[bool, str]:
        try:
            url = health_url(conn.guard(host.address), layout)
        except OrchestratorError as exc:
            return False, exc.message
        answer = http.get(url, timeout=HEALTH_TIMEOUT)
        return answer.ok, answer.error or (f"HTTP {answer.status}" if not answer.ok else "")

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(hosts)))) as pool:
        checks = [pool.submit(health, h) for h in hosts]
        runs = run_on_hosts(conn, hosts, command, timeout=SSH_TIMEOUT)
        answers = [c.result() for c in checks]
    found = [host_status(h, r, ok, err) for h, r, (ok, err) in zip(hosts, runs, answers, strict=True)]
    return FleetStatus(env=loaded.name, hosts=found, duration=time.monotonic() - started)


def fleet_status(loaded: LoadedEnvironment) -> FleetStatus:
    """Every app host's release, previous release, unit state and health (UsageError before
    provisioning or without app hosts)."""
    return probe_hosts(loaded, app_hosts(loaded))
