"""The fast status: the remote command, the parsing of its answer and each host's row (pure)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator.fleet.inventory import Host
from orchestrator.fleet.remote import HostRun
from orchestrator.release.probe import ServiceLayout, health_url, host_status, parse_status, status_command

LAYOUT = ServiceLayout(base_dir="/opt/hello", unit="hello.service", port=8080, health_path="/healthz")
HOST = Host("dev-app-1", "10.213.10.10", ("app",))


def test_the_remote_command_reads_the_links_and_releases_of_a_real_layout(tmp_path: Path) -> None:
    base = tmp_path / "opt hello"
    for release in ("0.1.0-aaaaaaaaaaaa", "0.2.0-0123456789ab"):
        (base / "releases" / release).mkdir(parents=True)
    (base / "current").symlink_to("releases/0.2.0-0123456789ab")
    (base / "previous").symlink_to(base / "releases" / "0.1.0-aaaaaaaaaaaa")
    layout = ServiceLayout(base_dir=str(base), unit="hello.service", port=8080, health_path="/healthz")
    # the same shell a host runs it with; systemctl may be missing or say anything here
    result = subprocess.run(["sh", "-c", status_command(layout)], capture_output=True, text=True, check=False)
    state = parse_status(result.stdout)
    assert state.release == "0.2.0-0123456789ab"
    assert state.previous_release == "0.1.0-aaaaaaaaaaaa"
    assert sorted(state.releases) == ["0.1.0-aaaaaaaaaaaa", "0.2.0-0123456789ab"]
    assert "systemctl is-active hello.service" in status_command(LAYOUT)


def test_quoting_survives_odd_names() -> None:
    odd = ServiceLayout(base_dir="/opt/my svc", unit="my svc.service", port=1, health_path="/h")
    assert "'/opt/my svc'" in status_command(odd)


def test_parse_reads_release_ids_from_the_link_targets() -> None:
    state = parse_status("current=releases/0.2.0-0123456789ab\nprevious=/opt/hello/releases/0.1.0-aaaaaaaaaaaa\n"
                         "unit=active\nreleases=0.1.0-aaaaaaaaaaaa 0.2.0-0123456789ab \n")
    assert state.release == "0.2.0-0123456789ab"
    assert state.previous_release == "0.1.0-aaaaaaaaaaaa"
    assert state.unit == "active"
    assert state.releases == ["0.1.0-aaaaaaaaaaaa", "0.2.0-0123456789ab"]


def test_parse_of_a_fresh_host() -> None:
    state = parse_status("current=\nprevious=\nunit=inactive\nreleases=\n")
    assert (state.release, state.previous_release, state.unit, state.releases) == (None, None, "inactive", [])
    assert parse_status("").unit == "unknown"


def test_rows_of_reachable_unhealthy_and_unreachable_hosts() -> None:
    answer = "current=releases/0.2.0-0123456789ab\nprevious=\nunit=active\nreleases=0.2.0-0123456789ab\n"
    ok = host_status(HOST, HostRun("dev-app-1", HOST.address, 0, answer, "", 0.01), True, "")
    assert ok.as_dict() == {"name": "dev-app-1", "address": "10.213.10.10", "release": "0.2.0-0123456789ab",
                            "previous_release": None, "unit": "active", "healthy": True,
                            "releases": ["0.2.0-0123456789ab"]}
    sick = host_status(HOST, HostRun("dev-app-1", HOST.address, 0, answer, "", 0.01), False, "HTTP 500")
    assert not sick.healthy and sick.error == "HTTP 500"
    gone = host_status(HOST, HostRun("dev-app-1", HOST.address, 255, "", "", 5.0, error="No route to host"),
                       False, "timed out")
    assert (gone.unit, gone.healthy, gone.release, gone.error) == ("unreachable", False, None, "No route to host")


def test_health_url() -> None:
    assert health_url("10.213.10.10", LAYOUT) == "http://10.213.10.10:8080/healthz"
    assert health_url("fd00::1", LAYOUT) == "http://[fd00::1]:8080/healthz"
