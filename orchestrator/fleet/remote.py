"""Direct sessions to an environment's hosts: who to connect as, with which key, through the guard.

The connection settings are the inventory's (the user and key provisioning wrote there, the
environment's known_hosts), so `orchestrate exec` and `logs` reach a host exactly as Ansible
does; every address passes the address guard (orchestrator.fleet.guard) before ssh starts.
`run_on_hosts` runs one command per host in parallel and returns every host's result, failures
included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import CommandTimeout, OrchestratorError, UsageError
from orchestrator.fleet.guard import address_check
from orchestrator.fleet.inventory import Host, allowed_networks, fleet_hosts, load_inventory
from orchestrator.paths import ssh_key
from orchestrator.tools.ansible import check_inventory_addresses
from orchestrator.tools.process import Input, LineCallback
from orchestrator.tools.ssh import AddressGuard, SshOptions, SshTarget, describe_failure, run_ssh

#: hosts contacted at once
MAX_PARALLEL = 32


@dataclass(frozen=True)
class Connection:
    """How the controller reaches the hosts of one environment."""

    user: str
    key: Path
    known_hosts: Path | None
    guard: AddressGuard
    python: str = "/usr/bin/python3"
    """The hosts' Python (the inventory's ansible_python_interpreter)."""

    @property
    def become(self) -> list[str]:
        """The argv prefix running a command as root (sudo without a prompt unless the user is root)."""
        return [] if self.user == "root" else ["sudo", "-n", "--"]

    def target(self, host: Host) -> SshTarget:
        return SshTarget(name=host.name, address=host.address, user=self.user, key=self.key,
                         known_hosts=self.known_hosts)


def connection(loaded: LoadedEnvironment) -> Connection:
    """The inventory's connection settings for `loaded` (UsageError before provisioning)."""
    path = loaded.paths.inventory
    if not path.is_file():
        raise UsageError(f"{loaded.name} has no inventory yet ({path}): run `orchestrate up {loaded.name}` first")
    networks = allowed_networks(loaded)
    if networks is not None:
        # a tampered inventory is refused whole, as a playbook run refuses it
        check_inventory_addresses(path, networks)
    all_vars: dict[str, Any] = (load_inventory(path).get("all") or {}).get("vars") or {}
    key = Path(str(all_vars.get("ansible_ssh_private_key_file") or ssh_key(loaded.project_dir)))
    return Connection(user=str(all_vars.get("ansible_user") or "root"), key=key,
                      known_hosts=loaded.paths.known_hosts, guard=address_check(loaded),
                      python=str(all_vars.get("ansible_python_interpreter") or "/usr/bin/python3"))


def inventory_hosts(loaded: LoadedEnvironment) -> list[Host]:
    """Every host of the inventory (UsageError before provisioning)."""
    if not loaded.paths.inventory.is_file():
        raise UsageError(f"{loaded.name} has no inventory yet ({loaded.paths.inventory}): "
                         f"run `orchestrate up {loaded.name}` first")
    return fleet_hosts(loaded)


@dataclass(frozen=True)
class HostRun:
    """One host's answer to a command."""

    host: str
    address: str
    exit_code: int | None
    """None: it never ran (refused by the guard, timed out)."""
    stdout: str
    stderr: str
    duration: float
    error: str = ""
    """Why it did not run or ssh failed; "" when the command ran (whatever its exit code)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.host, "address": self.address, "exit_code": self.exit_code, "stdout": self.stdout,
                "stderr": self.stderr, "duration": round(self.duration, 3), "error": self.error}


def run_on_host(conn: Connection, host: Host, command: str, *, timeout: float = 60,
                options: SshOptions | None = None, input_text: Input | None = None,
                on_stdout: LineCallback | None = None, stdout_to: Path | None = None) -> HostRun:
    """Run `command` on `host`; its HostRun (`on_stdout` hears each line as it comes; with
    `stdout_to` its stdout goes into that file instead, a download). Nothing raises: a refused
    address, a timeout or an unreachable host is the result (exit_code None, or 255 with ssh's
    message in `error`)."""
    started = time.monotonic()
    try:
        result = run_ssh(conn.target(host), command, guard=conn.guard, options=options, timeout=timeout,
                         input_text=input_text, on_stdout=on_stdout, stdout_to=stdout_to)
    except CommandTimeout:
        return HostRun(host.name, host.address, None, "", "", time.monotonic() - started,
                       error=f"timed out after {timeout:g} s")
    except OrchestratorError as exc:
        return HostRun(host.name, host.address, None, "", "", time.monotonic() - started, error=exc.message)
    error = describe_failure(result) if result.returncode == 255 else ""
    return HostRun(host.name, host.address, result.returncode, result.stdout, result.stderr, result.duration,
                   error=error)


def run_on_hosts(conn: Connection, hosts: Sequence[Host], command: str | Callable[[Host], str], *,
                 timeout: float = 60, options: SshOptions | None = None) -> list[HostRun]:
    """Run `command` (a remote command line, or one per host) on every host in parallel; one
    HostRun per host, in `hosts`' order. Nothing raises for a single host (see `run_on_host`)."""

    def one(host: Host) -> HostRun:
        line = command(host) if callable(command) else command
        return run_on_host(conn, host, line, timeout=timeout, options=options)

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(hosts))) as pool:
        return list(pool.map(one, hosts))
