"""The physical floor of a release change.

The floor is the same work a release change does, done by hand with nothing but plain parallel
`ssh` and HTTP: per host, one `ssh` that receives the binary on stdin into a new release
directory, checks its sha256, switches `current` atomically and restarts the unit; then the
service's health path polled (every 20 ms) until the new process answers with the new version.
All hosts at once; the figure is the time until the last host serves the new release.

No tool does it faster on these hosts without skipping a step, so a deploy figure divided by it
says how much of a deploy is the tool's own.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import threading
import time
from pathlib import Path

from common import FleetEnv

from orchestrator.fleet.local.fleet import HostSpec
from orchestrator.fleet.local.network import FleetNetwork
from tests.support.net import http_get

#: how often the controller asks a restarted host for its version
PROBE_INTERVAL = 0.02


def switch_command(base_dir: str, unit: str, binary_name: str, release_id: str, sha256: str) -> str:
    """The one remote command of a floor release change (stdin: the binary)."""
    release = f"{base_dir}/releases/{release_id}"
    part = f"{release}/.{binary_name}.part"
    q = shlex.quote
    return (
        f"set -e; mkdir -p {q(release)}; cat > {q(part)}; echo {q(f'{sha256}  {part}')} | sha256sum -c --quiet; "
        f"chmod 0755 {q(part)}; mv {q(part)} {q(f'{release}/{binary_name}')}; "
        f"ln -sfn {q(release)} {q(base_dir)}/.current.floor; mv -T {q(base_dir)}/.current.floor {q(base_dir)}/current; "
        f"systemctl restart {q(unit)}"
    )


def _wait_for_version(url: str, version: str, network: FleetNetwork, deadline: float) -> None:
    while True:
        try:
            status, body = http_get(url, network=network, timeout=1)
            if status == 200 and f'"version":"{version}"' in body:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not report {version} within the deadline")
        time.sleep(PROBE_INTERVAL)


def release_change(fleet: FleetEnv, binary: Path, version: str, label: str, *, timeout: float = 120) -> float:
    """One floor release change of every app host to `binary` (which reports `version` on
    /version) into a new release directory `<version>+<label>-<12 hex of its sha256>` (a release
    id as the tool writes them, so that a later `orchestrate deploy` on the fleet reads it): seconds
    until the last host serves it."""
    service = fleet.loaded.env.service
    base_dir, unit = f"/opt/{service.name}", f"{service.name}.service"
    binary_name = service.effective_binary
    payload = binary.read_bytes()
    sha256 = hashlib.sha256(payload).hexdigest()
    release_id = f"{version}+{label}-{sha256[:12]}"
    command = switch_command(base_dir, unit, binary_name, release_id, sha256)
    hosts = fleet.group("app")
    errors: list[str] = []

    def one(host: HostSpec) -> None:
        try:
            argv = fleet.ssh_argv(host, command)
            proc = subprocess.run(argv, input=payload, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"ssh exited {proc.returncode}: {proc.stdout[-300:]!r}")
            address = fleet.network.assert_own_address(host.address)
            _wait_for_version(f"http://{address}:{service.port}/version", version, fleet.network, started + timeout)
        except Exception as exc:  # reported below, for every host that failed
            errors.append(f"{host.name}: {exc}")

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError("floor release change failed: " + "; ".join(errors))
    return elapsed

