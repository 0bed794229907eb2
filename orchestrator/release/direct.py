"""The release path without a playbook: roles/rust_service's modules over one SSH session per host.

A switch to a release already on the hosts (`orchestrate rollback`, the fleet restore after a
failed deploy) is one call of the role's `rust_release` per host; a release change on hosts whose
setup is the one recorded (tasks/setup.yml's fingerprint) is three: the environment file
(`rust_env_file`), the executable's transfer and the health-gated switch. Starting Ansible for
that costs more than the work (ansible-playbook's start, the play's load, the first contact with
every host: seconds, against well under a second for the work itself), so here the controller
sends the modules' source, the role's module_utils and the calls' parameters as one JSON line
on the session's stdin, followed by the executable's bytes when it is shipped; a fixed bootstrap
(`BOOTSTRAP`, the only program text on the command line) loads the modules, runs the calls in
order (`run_direct`, `receive_release`: the same code the playbook runs, with AnsibleModule's
parameter checks done by `direct_params`) and prints each result on a line of its own as it
finishes, stopping at the first failure.

The answer has the shape of a playbook run (tools.ansible.PlaybookResult: a TaskResult per call
under the role's task names, the Failures, HostEvents as each call finishes), so the release path
reads it as it reads a playbook's: the journal's host transitions, the outcomes, the fleet
restore. A deploy goes in the playbook's batches (the canary hosts, then `rollout.batch_size` at
a time) and stops after a batch with more failures than `rollout.max_fail_percentage`; old
releases are removed once every host passed its gate. A failed switch leaves its evidence on the
controller as the role's rescue does (`<evidence_dir>/<host>/<item>.txt`). SIGINT or SIGTERM is
noted and ends the run after the batch that is running: a switch is never cut half-way.

Values are data all the way: parameters and secrets travel as JSON on stdin, never on a command
line or in a file on the controller.
"""

from __future__ import annotations

import base64
import functools
import json
import marshal
import os
import queue
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.types import parse_duration
from orchestrator.fleet.inventory import Host
from orchestrator.fleet.remote import MAX_PARALLEL, Connection, HostRun, connection, run_on_host, run_on_hosts
from orchestrator.release.results import CLEANUP_TASK, MODULE, RELEASE_TASK, STAGE_TASK_PREFIX, EventSink
from orchestrator.tools.ansible import (
    CANCELED_RC,
    CANCELED_STATUS,
    Failure,
    HostEvent,
    HostSummary,
    PlaybookResult,
    TaskResult,
    cancel_on_signals,
    failure_message,
)
from orchestrator.tools.ssh import SshOptions, remote_argv

#: the role every release action runs (its files are also inputs of the setup fingerprint); its
#: module_utils and modules in the order they are loaded
ROLE = "rust_service"
MODULE_UTILS = ("rust_service_bundle", "rust_service_cmdline", "rust_service_envfile")
ENV_FILE_MODULE = "rust_env_file"
MODULES = (MODULE, ENV_FILE_MODULE)

#: the prefix of a result line (anything else a module prints is not a result)
RESULT_MARK = "orchestrate-result "

#: what runs on the host: load the modules of the first stdin line (their code as the controller
#: compiled it when the host's Python reads the same bytecode, else their source), run the calls,
#: print each result
BOOTSTRAP = f"""\
import binascii, json, marshal, sys, types
from importlib.util import MAGIC_NUMBER
stdin = sys.stdin.buffer
payload = json.loads(stdin.readline())
precompiled = payload["magic"] == MAGIC_NUMBER.hex()
for name, source, code in payload["modules"]:
    module = types.ModuleType(name)
    module.__file__ = "<orchestrate>/" + name + ".py"
    sys.modules[name] = module
    code = marshal.loads(binascii.a2b_base64(code)) if precompiled else compile(source, module.__file__, "exec")
    exec(code, module.__dict__)
results = []
for call in payload["calls"]:
    module, params = sys.modules[call["module"]], dict(call["params"])
    if any(results[i].get("changed") for i in call["restart_if_changed"]):
        params["restart"] = True
    if call["receive"]:
        result = module.receive_release(params, stdin)
    else:
        result = module.run_direct(params, call["check_mode"])
    results.append(result)
    sys.stdout.write("\\n{RESULT_MARK}" + json.dumps(result) + "\\n")
    sys.stdout.flush()
    if result.get("failed"):
        break
"""

#: evidence items a failed switch reports (the role's rescue keeps the same ones)
EVIDENCE_ITEMS = ("health", "journal", "status", "hook", "integrity", "restored_health")

#: seconds a session may take beyond the health gates and hooks it runs (connect, transfer, restart)
SESSION_MARGIN = 60.0

#: the switch to an existing release and the release change without Ansible; 0 runs the playbooks
DIRECT_ENV = "ORCHESTRATE_DIRECT"

#: the task names of roles/rust_service the calls report under (the journal's transitions read them)
ENV_FILE_TASK = "Write the service's environment file"

#: the environment file's header as the role writes it (`'Ansible managed' | comment`): the same
#: bytes whichever path wrote the file last, so that switching paths is not a change
ENV_FILE_HEADER = "#\n# Ansible managed\n#"

#: the role's default rust_service_hook_timeout (the environment file has no setting for it)
HOOK_TIMEOUT = 300.0


def direct_enabled(tuned: bool) -> bool:
    """Whether the release path may skip Ansible (the tuned path) or always runs the playbooks."""
    return tuned and os.environ.get(DIRECT_ENV, "1") != "0"


@dataclass(frozen=True)
class Call:
    """One module call of a session: the role task it stands for, the module and its parameters."""

    task: str
    module: str
    params: Mapping[str, Any]
    receive: bytes | None = None
    """The executable's bytes, sent after the JSON line (`receive_release`); None: not a transfer."""
    restart_if_changed: tuple[int, ...] = ()
    """Earlier calls of the session whose change restarts the service (`restart` set on the host)."""
    action: str = ""
    """The action its result is filed under (default: the module)."""


# --- parameters, as the role's tasks pass them ---------------------------------------------------


def _service_params(loaded: LoadedEnvironment) -> dict[str, Any]:
    """rust_release's parameters every switch shares (roles/rust_service/tasks/release.yml)."""
    service = loaded.env.service
    name = service.name
    config_dir = f"/etc/{name}"
    params: dict[str, Any] = {
        "service": name, "binary": service.effective_binary, "base_dir": f"/opt/{name}",
        "user": service.effective_user, "data_dir": service.effective_data_dir, "config_dir": config_dir,
        "env_file": f"{config_dir}/{name}.env", "port": service.port, "health_path": service.health.path,
        "health_timeout": parse_duration(service.health.timeout),
        "health_interval": parse_duration(service.health.interval),
        "keep_releases": service.keep_releases, "hook_timeout": HOOK_TIMEOUT,
        # the role passes it when it has trusted keys, which a run of orchestrate always has (the
        # environment's signing key is created on first use): a switch verifies the manifest
        "allowed_signers": f"/etc/orchestrate/{name}.release-signers",
    }
    return params


def switch_params(loaded: LoadedEnvironment, release_id: str | None, previous_id: str = "") -> dict[str, Any]:
    """rust_release's parameters for a switch to `release_id` (None: the host's previous release)
    already on the host, as the role passes them for a rollback; `previous_id` is what `previous`
    names afterwards ("" the release left, "-" none)."""
    params = {**_service_params(loaded), "state": "rollback", "previous_id": previous_id, "restart": False}
    if release_id:
        params["release_id"] = release_id
    return params


def restart_params(loaded: LoadedEnvironment) -> dict[str, Any]:
    """rust_release's parameters for a restart of the current release in place, gated (heal)."""
    return {**_service_params(loaded), "state": "restart"}


@dataclass(frozen=True)
class ReleaseChange:
    """What a deploy ships: the staged executable and what rust_release checks it against."""

    release_id: str
    version: str
    sha256: str
    binary: Path
    manifest: str = ""
    signature: str = ""


def release_calls(loaded: LoadedEnvironment, change: ReleaseChange, env: Mapping[str, Any], *,
                  payload: bytes) -> list[Call]:
    """The calls of a release change on one host whose setup is current: the environment file,
    the executable (`payload`, its bytes; empty when the host has it, which is then checked), the
    gated switch (restarted in place when the environment file changed)."""
    shared = _service_params(loaded)
    env_file = Call(ENV_FILE_TASK, ENV_FILE_MODULE, {"path": shared["env_file"], "env": dict(env),
                                                      "header": ENV_FILE_HEADER})
    receive = Call(f"{STAGE_TASK_PREFIX} as {change.release_id}", MODULE,
                   {"service": shared["service"], "binary": shared["binary"], "base_dir": shared["base_dir"],
                    "release_id": change.release_id, "sha256": change.sha256, "size": len(payload)},
                   receive=payload, action="copy")
    present: dict[str, Any] = {
        **shared, "state": "present", "release_id": change.release_id, "sha256": change.sha256,
        "version": change.version, "hooks": loaded.env.service.hooks.as_role_input(), "restart": False,
        "manifest": change.manifest, "signature": change.signature,
    }
    return [env_file, receive, Call(RELEASE_TASK, MODULE, present, restart_if_changed=(0,))]


def cleanup_call(loaded: LoadedEnvironment) -> Call:
    """deploy.yml's last play: remove releases beyond the ones to keep (never current or previous)."""
    shared = _service_params(loaded)
    return Call(CLEANUP_TASK, MODULE, {"state": "cleanup", "service": shared["service"], "binary": shared["binary"],
                                       "base_dir": shared["base_dir"], "keep_releases": shared["keep_releases"]})


# --- the hosts' readiness for a release change ----------------------------------------------------


def readiness_command(conn: Connection, loaded: LoadedEnvironment, fingerprint: str, change: ReleaseChange) -> str:
    """One command reporting `setup=1` when the host's recorded setup is `fingerprint`'s and
    unchanged, and `binary=<sha256>` of the release's executable when it is there (pure)."""
    shared = _service_params(loaded)
    record = f"{shared['config_dir']}/.setup.{fingerprint}.sha256"
    executable = f"{shared['base_dir']}/releases/{change.release_id}/{shared['binary']}"
    script = (f"if sha256sum --quiet --strict --check {shlex.quote(record)} >/dev/null 2>&1; "
              f"then echo setup=1; else echo setup=0; fi; "
              f"printf 'binary=%s\\n' \"$(sha256sum {shlex.quote(executable)} 2>/dev/null | cut -d' ' -f1)\"")
    return remote_argv([*conn.become, "sh", "-c", script])


@dataclass(frozen=True)
class Readiness:
    """Per host: whether its setup is current, and whether the release's executable is there."""

    setup_current: dict[str, bool]
    has_binary: dict[str, bool]

    @property
    def all_current(self) -> bool:
        return bool(self.setup_current) and all(self.setup_current.values())


def readiness(loaded: LoadedEnvironment, hosts: Sequence[Host], fingerprint: str, change: ReleaseChange) -> Readiness:
    """Ask every host at once (a host that does not answer is not current: the playbook handles it)."""
    conn = connection(loaded)
    answers = run_on_hosts(conn, hosts, readiness_command(conn, loaded, fingerprint, change), timeout=30,
                           options=SshOptions.shared())
    setup: dict[str, bool] = {}
    binary: dict[str, bool] = {}
    for answer in answers:
        said = dict(line.partition("=")[::2] for line in answer.stdout.splitlines() if "=" in line)
        setup[answer.host] = answer.ok and said.get("setup") == "1"
        binary[answer.host] = answer.ok and said.get("binary") == change.sha256
    return Readiness(setup_current=setup, has_binary=binary)


# --- sessions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """A module a session loads: its name and source, and its code as compiled here (for a host
    whose Python has the same MAGIC_NUMBER: no compile per host)."""

    name: str
    source: str

    @property
    def code(self) -> str:
        """base64 of marshal's bytes of the compiled module (named as BOOTSTRAP names it)."""
        return _compiled(self.name, self.source)


@functools.cache
def _compiled(name: str, source: str) -> str:
    """`Module.code`, compiled once per process and source (a deploy's switch and cleanup rounds,
    a restore after it, send the same modules)."""
    code = compile(source, f"<orchestrate>/{name}.py", "exec", dont_inherit=True, optimize=0)
    return base64.b64encode(marshal.dumps(code)).decode("ascii")


def module_sources(project_dir: Path) -> list[Module]:
    """The role's module_utils and modules, in load order."""
    role = project_dir / "roles" / ROLE
    paths = [role / "module_utils" / f"{name}.py" for name in MODULE_UTILS]
    paths += [role / "library" / f"{name}.py" for name in MODULES]
    return [Module(path.stem, path.read_text(encoding="utf-8")) for path in paths]


def session_input(modules: Sequence[Module], calls: Sequence[Call], *,
                  check_mode: bool = False) -> tuple[bytes, ...]:
    """What one host's session reads on stdin (pure): the JSON line (the module_utils and the
    modules the calls use), then the bytes of each transfer (the same bytes object for every
    host: a large binary is never copied per host)."""
    used = set(MODULE_UTILS) | {c.module for c in calls}
    document = {
        "magic": MAGIC_NUMBER.hex(),
        "modules": [[m.name, m.source, m.code] for m in modules if m.name in used],
        "calls": [{"module": c.module, "params": dict(c.params), "check_mode": check_mode,
                   "receive": c.receive is not None, "restart_if_changed": list(c.restart_if_changed)}
                  for c in calls],
    }
    return ((json.dumps(document) + "\n").encode(), *(c.receive for c in calls if c.receive))


def result_line(line: str) -> dict[str, Any] | None:
    """The result a line of the session's output carries, or None (pure)."""
    if not line.startswith(RESULT_MARK):
        return None
    try:
        result = json.loads(line[len(RESULT_MARK):])
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def session_outcome(answer: HostRun) -> tuple[str, dict[str, Any]]:
    """(status, result) of a session that ended before a call's result came (pure): unreachable
    when ssh did not get through, else failed with what the host said."""
    if answer.exit_code is None or answer.exit_code == 255:
        return "unreachable", {"msg": answer.error or "no answer", "unreachable": True}
    said = " ".join((answer.stderr or answer.stdout).split())[-500:]
    return "failed", {"msg": f"the session ended without a result (exit {answer.exit_code}): {said or 'no output'}"}


def call_status(result: Mapping[str, Any]) -> str:
    """ok, changed or failed, as Ansible names a task's outcome (pure)."""
    if result.get("failed"):
        return "failed"
    return "changed" if result.get("changed") else "ok"


def keep_evidence(evidence_dir: Path | None, host: str, result: Mapping[str, Any]) -> Path | None:
    """Write a failed switch's evidence to `<evidence_dir>/<host>/<item>.txt`; the directory, or None."""
    evidence = result.get("evidence")
    if evidence_dir is None or not isinstance(evidence, Mapping):
        return None
    items = {item: evidence[item] for item in EVIDENCE_ITEMS if isinstance(evidence.get(item), str)}
    if not items:
        return None
    directory = evidence_dir / host
    directory.mkdir(parents=True, exist_ok=True)
    for item, text in items.items():
        (directory / f"{item}.txt").write_text(text, encoding="utf-8")
    return directory


def remote_command(conn: Connection) -> str:
    """The one command line of a session: the hosts' Python (as root) running BOOTSTRAP (pure),
    without the site module (the modules use the standard library only; its start is the host's)."""
    return remote_argv([*conn.become, conn.python, "-S", "-c", BOOTSTRAP])


#: the slowest transfer a session allows for (bytes per second) before it counts as hung
MIN_TRANSFER_RATE = 1_000_000


def session_timeout(calls: Sequence[Call]) -> float:
    """Seconds a session may take: its health gates (twice: a failed one restores), its hooks, its
    transfer at MIN_TRANSFER_RATE, a margin."""
    seconds = SESSION_MARGIN
    for call in calls:
        seconds += 2 * float(call.params.get("health_timeout") or 0)
        seconds += 2 * float(call.params.get("hook_timeout") or 0) * len(call.params.get("hooks") or {})
        seconds += len(call.receive or b"") / MIN_TRANSFER_RATE
    return seconds


#: after a batch: (its hosts, the names of those that failed) -> whether the run stops there
StopRule = Callable[[Sequence[Host], set[str]], bool]


@dataclass
class _Run:
    """The PlaybookResult being built, only ever touched by the main thread."""

    result: PlaybookResult
    evidence_dir: Path | None
    on_event: EventSink | None
    failed: set[str] = field(default_factory=set)

    def record(self, host: str, call: Call, status: str, res: dict[str, Any]) -> None:
        out = self.result
        summary = out.hosts.setdefault(host, HostSummary())
        out.results.append(TaskResult(host=host, task=call.task, action=call.action or call.module, status=status,
                                      result=res))
        message = ""
        if status == "unreachable":
            summary.unreachable += 1
            message = failure_message(res)
            out.failures.append(Failure(host=host, task=call.task, message=message, unreachable=True))
        elif status == "failed":
            summary.failed += 1
            kept = keep_evidence(self.evidence_dir, host, res)
            message = failure_message(res) + (f" (evidence in {kept})" if kept is not None else "")
            out.failures.append(Failure(host=host, task=call.task, message=message))
        else:
            summary.ok += 1
            summary.changed += status == "changed"
        if status in {"failed", "unreachable"}:
            self.failed.add(host)
        if self.on_event is not None:
            self.on_event(HostEvent(host=host, task=call.task, status=status, message=message))


def run_sessions(loaded: LoadedEnvironment, batches: Sequence[Sequence[Host]], calls_of: Callable[[Host], list[Call]],
                 *, run_id: str, label: str, evidence_dir: Path | None = None, on_event: EventSink | None = None,
                 stop: StopRule | None = None, modules: Sequence[Module] | None = None) -> PlaybookResult:
    """Run `calls_of(host)` on every host, one SSH session each, batch after batch (the hosts of a
    batch at once); the answers as a playbook run named `label`. After a batch, `stop` (default:
    never) or a signal ends the run. Never raises for a host: one that cannot be reached is
    `unreachable`, as in a playbook run. `modules`: what the sessions load (default: the
    rust_service role's, `module_sources`)."""
    conn = connection(loaded)
    sources = list(modules) if modules is not None else module_sources(loaded.project_dir)
    command = remote_command(conn)
    started = time.monotonic()
    run = _Run(PlaybookResult(run_id=run_id, run_dir=evidence_dir or loaded.paths.runs, playbook=label, rc=0,
                              status="successful", duration=0.0), evidence_dir, on_event)
    answers: queue.Queue[tuple[str, int, dict[str, Any] | HostRun]] = queue.Queue()

    def session(host: Host, calls: list[Call]) -> None:
        count = 0

        def heard(line: str) -> None:
            nonlocal count
            result = result_line(line)
            if result is not None and count < len(calls):
                answers.put((host.name, count, result))
                count += 1

        try:
            answer = run_on_host(conn, host, command, timeout=session_timeout(calls), options=SshOptions.shared(),
                                 input_text=session_input(sources, calls), on_stdout=heard)
        except Exception as exc:  # a host's session never leaves the batch waiting
            answer = HostRun(host.name, host.address, None, "", "", 0.0, error=f"{type(exc).__name__}: {exc}")
        answers.put((host.name, -1, answer))

    largest = max((len(batch) for batch in batches), default=1)
    with cancel_on_signals() as signalled, ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, largest))) as pool:
        for batch in batches:
            calls = {host.name: calls_of(host) for host in batch}
            heard: dict[str, int] = dict.fromkeys(calls, 0)
            stopped: set[str] = set()  # hosts whose last call failed (the bootstrap stops there)
            for host in batch:
                pool.submit(session, host, calls[host.name])
            open_sessions = len(batch)
            while open_sessions:
                name, index, item = answers.get()
                if isinstance(item, HostRun):
                    open_sessions -= 1
                    if heard[name] < len(calls[name]) and name not in stopped:
                        # the session ended before that call's result: the call failed
                        status, res = session_outcome(item)
                        run.record(name, calls[name][heard[name]], status, res)
                    continue
                heard[name] = index + 1
                status = call_status(item)
                if status == "failed":
                    stopped.add(name)
                run.record(name, calls[name][index], status, item)
            run.result.interrupted_by = signalled()
            if run.result.interrupted_by is not None or (stop is not None and stop(batch, run.failed & set(calls))):
                break
    run.result.duration = time.monotonic() - started
    if run.result.interrupted_by is not None:
        run.result.rc, run.result.status = CANCELED_RC, CANCELED_STATUS  # as a playbook a signal stopped
    elif run.result.failures:
        run.result.rc, run.result.status = 2, "failed"
    return run.result


def run_release_calls(loaded: LoadedEnvironment, hosts: Sequence[Host], params_of: Callable[[Host], Mapping[str, Any]],
                      *, run_id: str, label: str, evidence_dir: Path | None = None,
                      on_event: EventSink | None = None) -> PlaybookResult:
    """One rust_release call with `params_of(host)` on every host of `hosts` at once (a rollback,
    a fleet restore): every host is attempted, as rollback.yml attempts every host."""
    return run_sessions(loaded, [hosts] if hosts else [], lambda host: [Call(RELEASE_TASK, MODULE, params_of(host))],
                        run_id=run_id, label=label, evidence_dir=evidence_dir, on_event=on_event)


# --- a release change in the playbook's batches -----------------------------------------------------


def batch_size(spec: int | str, count: int) -> int:
    """Hosts per batch for `rollout.batch_size` (a count, or a percentage of `count` rounded down, at
    least 1), as Ansible's `serial` counts them (pure)."""
    if isinstance(spec, str) and spec.endswith("%"):
        return max(1, int(float(spec[:-1]) / 100 * count))
    return max(1, int(spec))


def rollout_batches(hosts: Sequence[Host], canary: Sequence[str], spec: int | str) -> list[list[Host]]:
    """deploy.yml's batches (pure): the canary hosts together, then the others `spec` at a time."""
    first = [h for h in hosts if h.name in set(canary)]
    rest = [h for h in hosts if h.name not in set(canary)]
    size = batch_size(spec, len(rest)) if rest else 1
    return ([first] if first else []) + [rest[i:i + size] for i in range(0, len(rest), size)]


def stop_rule(canary: Sequence[str], max_fail_percentage: int) -> StopRule:
    """deploy.yml's rules (pure): the canary play stops at any failure; a batch stops the rollout
    when more than `max_fail_percentage` of its hosts failed (any failure at 0)."""

    def stop(batch: Sequence[Host], failed: set[str]) -> bool:
        if not failed:
            return False
        if max_fail_percentage == 0 or any(h.name in set(canary) for h in batch):
            return True
        return len(failed) / len(batch) * 100 > max_fail_percentage

    return stop
