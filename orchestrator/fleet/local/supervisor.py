"""The launcher of one local host: `python -m orchestrator.fleet.local.supervisor HOST_DIR`.

It is started detached by orchestrator.fleet.local.fleet, moves itself into the host's own cgroup
(PID 1 of this machine is not systemd, so nothing else separates the hosts' units), runs
systemd-nspawn and relaunches it when the container reboots (exit code 133). It imports as
little as possible: twenty of these start at once on a two-core machine.

With `--adopt PID` it takes over a container whose launcher died while the container kept running
(`orchestrate provision` starts it so, see LocalFleet.start): it waits for that systemd-nspawn
process to end, then goes on as above. The process is not its child, so its exit code cannot be
read: unless a stop was asked for, its end is taken for a reboot and the container boots again.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path

from orchestrator.tools.process import run_command

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: cgroup hierarchies a host's processes are placed in (PID 1 here is not systemd, so every
#: host needs its own cgroup or the units of different hosts mix).
CGROUP_HIERARCHIES = ("systemd", "unified")
CGROUP_PARENT = "orchestrate"
#: systemd-nspawn's exit code when the container asked to reboot
NSPAWN_REBOOT = 133
#: written by `stop` so that a reboot racing with the stop is not relaunched
STOP_REQUESTED = "stop-requested"


def cgroup_dirs(name: str) -> list[Path]:
    """The host's cgroup directory in each hierarchy it is placed in."""
    return [CGROUP_ROOT / h / CGROUP_PARENT / name for h in CGROUP_HIERARCHIES]


def join_cgroup(name: str) -> None:
    """Move the calling process into the host's cgroups (created when missing)."""
    for directory in cgroup_dirs(name):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").write_text(str(os.getpid()))


def nspawn_argv(merged: Path, name: str, bridge: str) -> list[str]:
    """argv of the container (flags measured on this machine kind; see docs/local-hosts.md)."""
    return [
        "systemd-nspawn",
        "-D",
        str(merged),
        "--boot",
        f"--machine={name}",
        f"--network-bridge={bridge}",
        # PID 1 of the machine is not systemd: no machined to register with, no unit to create.
        "--register=no",
        "--keep-unit",
        "--console=passive",
    ]


def _read_stat(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2][:3]
    except OSError:
        return ""


def wait_for_exit(pid: int) -> None:
    """Return once process `pid` (not a child of this one) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfds (Linux < 5.3): look every half second (a zombie has ended too)
        while Path(f"/proc/{pid}").exists() and " Z " not in _read_stat(pid):
            time.sleep(0.5)
        return
    try:
        select.select([fd], [], [])  # a pidfd becomes readable when its process ends
    finally:
        os.close(fd)


def supervise(host_dir: Path, adopt: int | None = None) -> int:
    """Run the host's container until it powers off; relaunch it when it reboots (exit 133).

    With `adopt`, first wait for that running systemd-nspawn process of the host to end.
    """
    record = json.loads((host_dir / "host.json").read_text())
    join_cgroup(record["name"])
    argv = nspawn_argv(host_dir / "merged", record["name"], record["bridge"])
    if adopt is not None:
        print(f"[supervisor] adopted the running container (systemd-nspawn pid {adopt})", flush=True)
        wait_for_exit(adopt)
        if (host_dir / STOP_REQUESTED).exists():
            return 0
        print("[supervisor] the adopted container ended without a stop asked for: booting it again", flush=True)
    while True:
        result = run_command(
            argv,
            timeout=None,
            check=False,
            on_stdout=lambda line: print(line, flush=True),
            on_stderr=lambda line: print(line, file=sys.stderr, flush=True),
        )
        print(f"[supervisor] systemd-nspawn exited with {result.returncode}", flush=True)
        if result.returncode != NSPAWN_REBOOT or (host_dir / STOP_REQUESTED).exists():
            return result.returncode


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and (sys.argv[2] != "--adopt" or not sys.argv[3].isdigit())):
        print("usage: python -m orchestrator.fleet.local.supervisor HOST_DIR [--adopt NSPAWN_PID]", file=sys.stderr)
        sys.exit(2)
    sys.exit(supervise(Path(sys.argv[1]), int(sys.argv[3]) if len(sys.argv) == 4 else None))
