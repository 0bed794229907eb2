"""Adapter over HAProxy's runtime on a load-balancer host.

The haproxy role installs a helper, `/usr/local/sbin/orchestrate-haproxy`, that drives the
admin socket (`show stat`, `get weight`, `set weight`: no reload, no request lost) and saves
HAProxy's server-state file, which keeps the weights across reloads. The controller runs it over
SSH, with the user, key and known_hosts of the environment's inventory, and reads the JSON it
prints:

    {"servers": {"NAME": {"weight": 100, "status": "UP", "hrsp_2xx": 42, ...}, ...}}

argv and the reading of the answer are pure functions (`helper_argv`, `ssh_argv`,
`parse_servers`); `HAProxyRuntime` runs them through tools/process.run_command.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.files import private_dir, ssh_control_dir
from orchestrator.tools.process import run_command

#: the haproxy role's runtime helper on the LB host (roles/haproxy)
HELPER = "/usr/local/sbin/orchestrate-haproxy"

#: seconds one helper call (SSH included) may take
CALL_TIMEOUT = 30.0

#: the helper's actions: read the servers' state, or set weights and read it back
ACTIONS = ("state", "set")

Servers = dict[str, dict[str, Any]]


class HAProxyError(OrchestratorError):
    """The helper on the LB host failed, or answered something other than its JSON."""


class HelperMissing(HAProxyError):
    """The LB host has no helper: its HAProxy was never configured by the haproxy role."""


#: what the remote shell (or sudo) exits with when the helper is not installed
NOT_FOUND = 127


def helper_argv(action: str, backend: str, weights: Mapping[str, int] | None = None) -> list[str]:
    """The helper's argv on the LB host (pure): `state` or `set` of backend `backend`.

    Weights go as one `name=weight,...` argument, sorted by server name.
    """
    if action not in ACTIONS:
        raise ValueError(f"helper action {action!r} is not one of {', '.join(ACTIONS)}")
    argv = [HELPER, action, "--backend", backend]
    if weights:
        argv.append(",".join(f"{name}={int(w)}" for name, w in sorted(weights.items())))
    return argv


def control_dir(uid: int | None = None) -> Path:
    """Directory of the SSH master connections to LB hosts (one per user of this machine)."""
    return ssh_control_dir() if uid is None else Path(f"/tmp/orch-cp-{uid}")


def ssh_argv(inventory: Mapping[str, Any], address: str, remote: list[str], *, uid: int | None = None) -> list[str]:
    """ssh argv for `remote` on `address` with the inventory's user, key and known_hosts (pure).

    The helper drives HAProxy's admin socket, which only root may use: a login user other than
    root runs it through `sudo -n` (passwordless, as Ansible's become; never a password prompt).
    """
    all_vars = (inventory.get("all") or {}).get("vars") or {}
    user = str(all_vars.get("ansible_user") or "root")
    if user != "root":
        remote = ["sudo", "-n", *remote]
    argv = ["ssh"]
    key = all_vars.get("ansible_ssh_private_key_file")
    if key:
        argv += ["-i", str(key)]
    argv += shlex.split(str(all_vars.get("ansible_ssh_common_args") or ""))
    # one master connection per LB host, shared by the weight changes of a release: a switch
    # back is then one round trip on an open connection
    argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ControlMaster=auto",
             "-o", f"ControlPath={control_dir(uid)}/tr-%C", "-o", "ControlPersist=60s",
             f"{user}@{address}", shlex.join(remote)]
    return argv


def parse_servers(stdout: str, *, host: str = "the LB host") -> Servers:
    """The `servers` mapping of the helper's JSON answer (pure); HAProxyError when it is not JSON."""
    try:
        data = json.loads(stdout)
    except ValueError:
        raise HAProxyError(f"{host}: the helper answered no JSON: {stdout[-300:]!r}") from None
    if not isinstance(data, dict):
        raise HAProxyError(f"{host}: the helper answered {type(data).__name__}, not a JSON object: {stdout[-300:]!r}")
    servers = data.get("servers") or {}
    if not isinstance(servers, dict):
        raise HAProxyError(f"{host}: the helper's `servers` is {type(servers).__name__}, not a mapping")
    return {str(name): dict(fields or {}) for name, fields in servers.items()}


class HAProxyRuntime:
    """The runtime helper on one LB host, reached over SSH."""

    def __init__(self, inventory: Mapping[str, Any], address: str, *, name: str,
                 timeout: float = CALL_TIMEOUT) -> None:
        self.inventory = inventory
        self.address = address
        self.name = name
        self.timeout = timeout

    def call(self, remote: list[str]) -> Servers:
        """Run `remote` (a helper argv) on the host; its servers, or HAProxyError naming the host."""
        private_dir(control_dir())  # ours, 0700: refused when someone else made it
        result = run_command(ssh_argv(self.inventory, self.address, remote), timeout=self.timeout, check=False)
        # the shell says 127; sudo says 1 and "command not found"
        if result.returncode == NOT_FOUND or (result.returncode == 1 and "command not found" in result.stderr):
            raise HelperMissing(f"{self.name}: {remote[0]} is not installed (the load balancer was never "
                                "configured: `orchestrate traffic ENV --configure`)")
        if result.returncode != 0:
            raise HAProxyError(f"{self.name}: {shlex.join(remote)} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-500:]}")
        return parse_servers(result.stdout, host=self.name)

    def state(self, backend: str) -> Servers:
        """Per-server weight, status and counters of `backend` (`show stat` + `get weight`)."""
        return self.call(helper_argv("state", backend))

    def set_weights(self, backend: str, weights: Mapping[str, int]) -> Servers:
        """Set running weights of `backend`'s servers (admin socket, kept in the config); the new state."""
        return self.call(helper_argv("set", backend, weights))
