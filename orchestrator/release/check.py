"""`orchestrate deploy --check`: what a deploy would change on each host, changing nothing.

The deploy playbook runs in Ansible's check mode against the hosts the deploy would touch (the
`--limit` hosts; the idle colour under a traffic strategy): no backup, no lock, no journal, no
copy, no switch. Per host the answer is the release before -> after, whether the unit file
would change, which variables of the environment file would change (names, never values), the
hooks the switch would run, and any other task that would change something.

The role's modules report their part in check mode (`rust_release`: `release_before`,
`release`, `changed`, `would_run_hooks`; the environment file module: `keys_changed`). A role
whose `rust_release` does not support check mode has it skipped: the release before is then
read from the host directly (orchestrator.release.probe) and the host would change when that is
not the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.secrets import SECRETS_VAR
from orchestrator.fleet.inventory import Host
from orchestrator.fleet.playbooks import run_env_playbook
from orchestrator.release.artifact import Release
from orchestrator.release.probe import probe_hosts
from orchestrator.release.results import CLEANUP_TASK, MODULE, RELEASE_TASK, STAGE_TASK_PREFIX, EventSink
from orchestrator.tools.ansible import PlaybookResult, TaskResult

#: roles/rust_service tasks whose check-mode result says something specific
UNIT_TASK = "Install the systemd unit"
ENV_FILE_MODULE = "rust_env_file"
ENV_REPORT_TASK = "Report the environment variables that change"
#: tasks that change nothing of their own in check mode (housekeeping, reports, handlers)
_QUIET_TASKS = {CLEANUP_TASK, ENV_REPORT_TASK, "Reload systemd", "Reload systemd before the health gate"}


@dataclass(frozen=True)
class HostCheck:
    """What a deploy would do on one host."""

    name: str
    address: str
    release_before: str | None
    release_after: str | None
    unit_changed: bool = False
    env_changed: bool = False
    env_keys: list[str] | None = None
    """Names of the environment file's variables that would change; None: changed, names unknown."""
    hooks: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    """Other tasks that would change something (a user, a directory, a fresh host's setup)."""
    error: str = ""

    @property
    def release_changes(self) -> bool:
        return self.release_before != self.release_after

    @property
    def changes(self) -> bool:
        return bool(self.release_changes or self.unit_changed or self.env_changed or self.hooks or self.other)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "release_before": self.release_before,
                "release": self.release_after, "changes": self.changes, "unit_changed": self.unit_changed,
                "env_changed": self.env_changed, "env_keys": self.env_keys, "hooks": self.hooks,
                "other_changes": self.other, "error": self.error}


@dataclass
class DeployCheck:
    """The answer of `deploy --check`."""

    env: str
    release: str
    strategy: str
    hosts: list[HostCheck]
    run: PlaybookResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return any(h.changes for h in self.hosts)

    @property
    def failed(self) -> list[HostCheck]:
        return [h for h in self.hosts if h.error]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "action": "check", "release": self.release, "strategy": self.strategy,
                "changes": self.changes, "hosts": [h.as_dict() for h in self.hosts], "notes": self.notes,
                "run": self.run.as_dict() if self.run is not None else None}


def _keys_from_report(message: str) -> list[str]:
    """The variable names of the role's report line `PATH: NAME, NAME` (pure)."""
    _, sep, names = message.rpartition(": ")
    return [n.strip() for n in names.split(",") if n.strip()] if sep else []


def host_check(host: Host, results: Sequence[TaskResult], *, target: str, probed_release: str | None,
               failure: str = "") -> HostCheck:
    """One host's check from its task results in check mode (pure).

    `probed_release` is the host's current release read directly, used when the role's
    `rust_release` could not run in check mode (skipped).
    """
    before: str | None = probed_release
    after: str | None = target
    unit = env = False
    keys: list[str] | None = None
    hooks: list[str] = []
    other: list[str] = []
    for result in results:
        res: Mapping[str, Any] = result.result
        changed = result.status == "changed"
        if result.action == MODULE or result.action.endswith(f".{MODULE}"):
            if result.task == RELEASE_TASK and result.status in {"ok", "changed"}:
                before = _opt(res.get("release_before"))
                after = _opt(res.get("release")) or before
                hooks = [str(h) for h in res.get("would_run_hooks") or []]
            continue
        if result.action == ENV_FILE_MODULE or result.action.endswith(f".{ENV_FILE_MODULE}"):
            env = env or changed
            if isinstance(res.get("keys_changed"), list):
                keys = [str(k) for k in res["keys_changed"]]
            continue
        if result.task == ENV_REPORT_TASK and result.status == "ok" and res.get("msg"):
            keys = _keys_from_report(str(res["msg"]))
            continue
        if result.task == UNIT_TASK:
            unit = unit or changed
            continue
        if changed and result.task not in _QUIET_TASKS and not result.task.startswith(STAGE_TASK_PREFIX):
            other.append(result.task)
    # a no_log task's result is censored down to its status, which then reads `ok`: the role's
    # report of the keys that change is what says the file would change
    env = env or bool(keys)
    return HostCheck(name=host.name, address=host.address, release_before=before, release_after=after,
                     unit_changed=unit, env_changed=env, env_keys=keys if env else [], hooks=hooks,
                     other=sorted(set(other)), error=failure)


def check_deploy(loaded: LoadedEnvironment, hosts: Sequence[Host], release: Release, extra_vars: Mapping[str, Any],
                 *, secret_vars: Mapping[str, Any], strategy: str, tuned: bool = True,
                 on_event: EventSink | None = None) -> DeployCheck:
    """Run deploy.yml in check mode on `hosts` (`extra_vars`: the deploy's own) and say, per host,
    what a deploy of `release` would change."""
    probed = {h.name: h.release for h in probe_hosts(loaded, hosts).hosts}
    secrets = {SECRETS_VAR: dict(secret_vars)} if secret_vars else {}
    result = run_env_playbook(loaded, "deploy.yml", extra_vars, tuned=tuned, secret_vars=secrets,
                              limit=",".join(h.name for h in hosts), on_event=on_event, check=True, mitogen=True)
    found = []
    notes: list[str] = []
    skipped = False
    for host in hosts:
        mine = [r for r in result.results if r.host == host.name]
        skipped = skipped or any(r.task == RELEASE_TASK and r.status == "skipped" for r in mine)
        failure = result.last_failure(host.name)
        found.append(host_check(host, mine, target=release.id, probed_release=probed.get(host.name),
                                failure=failure.message if failure is not None else ""))
    if skipped:
        notes.append("the role's rust_release module does not support check mode: the release before was read "
                     "from the hosts, and the hooks a switch would run are not known")
    return DeployCheck(env=loaded.name, release=release.id, strategy=strategy, hosts=found, run=result,
                       notes=notes)


def _opt(value: object) -> str | None:
    return str(value) if value else None
