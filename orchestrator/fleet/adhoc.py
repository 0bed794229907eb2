"""`orchestrate exec`: one command on chosen hosts, in parallel, as a journalled and audited run.

The command is an argv: it reaches the remote shell quoted word by word (`shlex.join`), never
spliced into a string. Every host is reached through the address guard with the project's key
(orchestrator.fleet.remote); the run takes the environment lock like every command that may
change an environment, and the journal and the audit log record who ran what where (the argv
recorded names the hosts it was run on, the step's detail every host's exit code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.fleet.remote import HostRun, connection, inventory_hosts, run_on_hosts
from orchestrator.fleet.select import select_hosts
from orchestrator.runs.backend import coordination_for
from orchestrator.runs.lock import DEFAULT_LOCK_WAIT
from orchestrator.runs.session import locked_run
from orchestrator.tools.ssh import remote_argv

#: seconds a command may run on a host by default
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class ExecRequest:
    """What `orchestrate exec ENV [HOST...|--group G] -- CMD ARGS...` asks for."""

    command: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    """Names or globs; none: every host of `group` (default: the app hosts)."""
    group: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    lock_wait: float | None = DEFAULT_LOCK_WAIT


@dataclass
class ExecOutcome:
    """Every host's output and exit code."""

    env: str
    command: list[str]
    hosts: list[HostRun] = field(default_factory=list)
    run_id: str | None = None

    @property
    def failed(self) -> list[HostRun]:
        return [h for h in self.hosts if not h.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "command": self.command, "run": self.run_id,
                "hosts": [h.as_dict() for h in self.hosts], "failed": [h.host for h in self.failed]}


class ExecFailed(OrchestratorError):
    """The command failed (or could not run) on at least one host; carries every host's result."""

    def __init__(self, message: str, result: ExecOutcome) -> None:
        super().__init__(message)
        self.result = result


def describe_failures(failed: Sequence[HostRun]) -> str:
    """`dev-app-2 (exit 3), dev-app-3 (unreachable: ...)` (pure)."""
    parts = []
    for run in failed:
        if run.exit_code is None or run.error:
            parts.append(f"{run.host} ({run.error or 'did not run'})")
        else:
            parts.append(f"{run.host} (exit {run.exit_code})")
    return ", ".join(parts)


def run_exec(loaded: LoadedEnvironment, request: ExecRequest, *,
             info: Callable[[str], None] = lambda message: None) -> ExecOutcome:
    """Run `request.command` on the chosen hosts of `loaded`; ExecFailed naming the hosts where it
    failed (the outcome still carries every host's output), UsageError before anything runs."""
    if not request.command:
        raise UsageError("no command given: orchestrate exec ENV [HOST...] -- CMD ARGS...")
    hosts = select_hosts(inventory_hosts(loaded), request.hosts, request.group)
    conn = connection(loaded)
    for host in hosts:  # refuse a foreign address before the lock is taken or any host is touched
        conn.guard(host.address)
    names = [h.name for h in hosts]
    # what the journal and the audit log keep: the hosts as resolved, then the command
    argv = ["exec", loaded.name, *names, "--", *request.command]
    outcome = ExecOutcome(env=loaded.name, command=list(request.command))
    with locked_run(coordination_for(loaded), command="exec", argv=argv, steps=["exec"], wait=request.lock_wait,
                    on_wait=info, env=loaded.name) as session, session.run.step("exec") as step:
        outcome.run_id = session.run.id
        step.update(command=list(request.command), hosts=names)
        info(f"running `{remote_argv(request.command)}` on {len(hosts)} host{'s' * (len(hosts) != 1)} of "
             f"{loaded.name}")
        outcome.hosts = run_on_hosts(conn, hosts, remote_argv(request.command), timeout=request.timeout)
        step.update(exit_codes={h.host: h.exit_code for h in outcome.hosts},
                    errors={h.host: h.error for h in outcome.hosts if h.error})
        if outcome.failed:
            raise ExecFailed(f"`{remote_argv(request.command)}` failed on {describe_failures(outcome.failed)}",
                             outcome)
    return outcome
