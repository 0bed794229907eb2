"""Processes, cgroups and mounts of running local hosts: finding a container's PID 1, killing a
host's cgroup, unmounting its overlay, asking systemd inside whether it is up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import HostError
from orchestrator.fleet.local.supervisor import cgroup_dirs
from orchestrator.tools.process import run_command

if TYPE_CHECKING:
    pass


def _pid_alive(pid: int) -> bool:
    """True for a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cgroup_pids(name: str) -> list[int]:
    """Every process in the host's cgroup tree (name=systemd hierarchy, all nested groups)."""
    pids: set[int] = set()
    for directory in _cgroup_tree(cgroup_dirs(name)[0]):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    return sorted(pids)


def _cgroup_tree(root: Path) -> list[Path]:
    """`root` and every cgroup below it, deepest first.

    os.walk, not Path.rglob: groups vanish while we look (systemd in a stopping host removes
    its own), and os.walk skips what disappeared instead of raising.
    """
    found = [Path(dirpath) for dirpath, _, _ in os.walk(root)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def nspawn_pid(name: str) -> int | None:
    """Host pid of the host's systemd-nspawn process (the container's parent), or None.

    Found in the host's cgroup by its command line (`systemd-nspawn ... --machine=NAME`); a process
    of the container itself is in a pid namespace of its own and never matches.
    """
    for pid in cgroup_pids(name):
        argv = _cmdline(pid)
        if not argv or Path(argv[0]).name != "systemd-nspawn" or f"--machine={name}" not in argv:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspids = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspids) == 1 and _pid_alive(pid):
            return pid
    return None


def container_leader(name: str) -> int | None:
    """Host pid of the container's PID 1 (the process that is pid 1 in its own namespace)."""
    for pid in cgroup_pids(name):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) > 1 and ids[-1] == "1":
                    return pid
    return None


def _kill_cgroup(name: str, timeout: float = 10.0) -> None:
    # cgroup.kill (cgroup v2, Linux >= 5.14) kills the whole tree at once, with no race
    # against processes forking meanwhile; the pid loop below is the fallback and the check.
    for directory in cgroup_dirs(name):
        with contextlib.suppress(OSError):
            (directory / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout
    while pids := cgroup_pids(name):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HostError(f"{name}: processes {pids} survive SIGKILL")
        time.sleep(0.05)


def _remove_cgroups(name: str) -> None:
    for directory in cgroup_dirs(name):
        # Only directories can be removed from cgroupfs (their files go with them), deepest first.
        for sub in _cgroup_tree(directory):
            with contextlib.suppress(OSError):
                sub.rmdir()


def _overlay_mounts_with_upper(upper: Path) -> list[str]:
    """Mount points of overlays whose upperdir is `upper`."""
    found = []
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 3 and fields[2] == "overlay" and f"upperdir={upper}," in fields[3] + ",":
                found.append(fields[1].replace("\\040", " "))
    return found


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def ssh_banner(address: str, port: int = 22, timeout: float = 0.3) -> bool:
    """True when something speaking SSH answers on address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def system_state(leader: int) -> str:
    """`systemctl is-system-running` inside the container whose PID 1 is `leader`."""
    result = run_command(
        ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "systemctl", "is-system-running"],
        timeout=15,
        check=False,
    )
    return result.stdout.strip() or "unknown"
