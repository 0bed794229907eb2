"""ansible-runner adapter: one private data dir per run, live per-host events, a per-host summary.

Every run gets `.orchestrate/<env>/runs/<run_id>/` with a generated `ansible.cfg` (ANSIBLE_CONFIG
points at it) and ansible-runner's artifacts. Settings are tuned by default (forks 20,
pipelining, SSH ControlPersist with a short control path, no implicit fact gathering); `tuned=False`
keeps stock Ansible settings for the benchmark.

Every value handed to Ansible is data, never a template: the extra vars (`extravars.yml` in the
run dir) and the secrets are written as YAML whose root mapping is tagged `!unsafe`, which makes
every string in it unsafe for Ansible, mapping keys included (`unsafe_yaml`), and passed with
`-e @FILE`. Ansible then never renders them, so
an environment value, a secret or a release id a host reported that reads
`{{ lookup('pipe', ...) }}` reaches its module argument as those characters and runs nothing on
the controller. (Extra vars given as JSON on the command line, ansible-runner's way, are trusted
templates.)

Secrets never land in the run dir, nor on any disk: `secret_vars` go to Ansible through a 0600
file in /dev/shm that is deleted as soon as the playbook has started (a killed run's is removed by
the next run), Ansible's own controller-side temp dir is in /dev/shm and removed after the run, and
tasks marked `no_log` are censored by Ansible before any event reaches us.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from orchestrator.errors import AnsibleError, HostError, Interrupted
from orchestrator.files import load_yaml, private_dir, ssh_control_dir

#: a no_log task's result as Ansible reports it
CENSORED_KEY = "censored"


@dataclass(frozen=True)
class AnsibleSettings:
    """Connection and execution settings written into the run's ansible.cfg."""

    forks: int
    pipelining: bool
    gathering: str
    """`explicit`: facts only where a play asks for them; `implicit`: Ansible's default."""
    ssh_args: str | None
    control_path_dir: str | None
    strategy_plugins: str | None = None
    """Directory of mitogen's strategy plugins when mitogen is used, else None."""

    @classmethod
    def tuned(cls, *, mitogen: bool = False) -> AnsibleSettings:
        """Fewer round trips per module call (docs/performance.md).

        With `mitogen`, the `mitogen_linear` strategy is used when mitogen is installed and
        ORCHESTRATE_ANSIBLE_MITOGEN is not 0; otherwise the settings are plain Ansible.
        """
        mitogen = mitogen and os.environ.get(MITOGEN_ENV, "1") != "0"
        return cls(
            forks=20,
            pipelining=True,
            gathering="explicit",
            ssh_args="-C -o ControlMaster=auto -o ControlPersist=60s",
            control_path_dir=str(ssh_control_dir()),
            strategy_plugins=mitogen_strategy_dir() if mitogen else None,
        )

    @classmethod
    def stock(cls) -> AnsibleSettings:
        """Ansible's own defaults (forks 5, facts gathered, no pipelining): the benchmark baseline."""
        return cls(forks=5, pipelining=False, gathering="implicit", ssh_args=None, control_path_dir=None)


#: seconds between SSH keepalives at most (fewer for a shorter connect timeout: a host that stops
#: answering mid-run is given up on as fast as one that never answered)
KEEPALIVE_INTERVAL = 15

#: set to 0 to keep plain Ansible even when mitogen is installed
MITOGEN_ENV = "ORCHESTRATE_ANSIBLE_MITOGEN"


def mitogen_strategy_dir() -> str | None:
    """Directory of ansible_mitogen's strategy plugins, or None when mitogen is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
    return str(path) if path.is_dir() else None


#: Ansible's own connect timeout: what a host has to answer SSH when nobody says otherwise
DEFAULT_CONNECT_TIMEOUT = 15

#: under mitogen, Ansible's `timeout` bounds the whole bootstrap of a host's connection (ssh, the
#: remote interpreter's start, mitogen's first stage), which on a busy machine takes longer than
#: reaching sshd; ssh's own ConnectTimeout (in ssh_args) bounds the reaching
MITOGEN_BOOTSTRAP_TIMEOUT = 15


def ansible_cfg_text(settings: AnsibleSettings, *, roles_path: Path,
                     connect_timeout: int = DEFAULT_CONNECT_TIMEOUT) -> str:
    """The ansible.cfg of one run (pure: unit-tested).

    `connect_timeout`: seconds a host has to accept the TCP connection and finish the SSH
    handshake before Ansible reports it unreachable; the SSH keepalive declares an established
    connection dead after three intervals of at most that long without an answer.
    """
    defaults = {
        "forks": str(settings.forks),
        "gathering": settings.gathering,
        "roles_path": str(roles_path),
        "callback_result_format": "yaml",
        "retry_files_enabled": "False",
        "interpreter_python": "auto_silent",
        "timeout": str(connect_timeout),
    }
    if settings.strategy_plugins is not None:
        defaults["strategy_plugins"] = settings.strategy_plugins
        defaults["strategy"] = "mitogen_linear"
        defaults["timeout"] = str(max(connect_timeout, MITOGEN_BOOTSTRAP_TIMEOUT))
    ssh: dict[str, str] = {"pipelining": str(settings.pipelining)}
    if settings.ssh_args is not None:
        # ssh takes the first value of an option: these win over the ConnectTimeout Ansible adds
        ssh["ssh_args"] = (f"{settings.ssh_args} -o ConnectTimeout={connect_timeout} "
                           f"-o ServerAliveInterval={min(connect_timeout, KEEPALIVE_INTERVAL)}")
    if settings.control_path_dir is not None:
        ssh["control_path_dir"] = settings.control_path_dir
    lines = ["# Generated by orchestrate for one run; do not edit.", "[defaults]"]
    lines += [f"{key} = {value}" for key, value in defaults.items()]
    lines += ["", "[ssh_connection]"]
    lines += [f"{key} = {value}" for key, value in ssh.items()]
    return "\n".join(lines) + "\n"


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostEvent:
    """One task outcome on one host, as it happens (drives the live progress display)."""

    host: str
    task: str
    status: str
    """ok, changed, failed, unreachable, skipped or rescued."""
    message: str = ""


@dataclass(frozen=True)
class TaskResult:
    """A finished task on one host with the module's return values (censored for no_log tasks)."""

    host: str
    task: str
    action: str
    status: str
    result: Mapping[str, Any]


@dataclass(frozen=True)
class Failure:
    """A failed or unreachable host: which task and what it said."""

    host: str
    task: str
    message: str
    unreachable: bool = False
    """Ansible could not connect to the host (as opposed to a task that failed on it)."""

    def __str__(self) -> str:
        return f"{self.host}: {self.task}: {self.message}"


@dataclass
class HostSummary:
    """Per-host counts from Ansible's final stats."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"ok": self.ok, "changed": self.changed, "failed": self.failed,
                "unreachable": self.unreachable, "skipped": self.skipped, "rescued": self.rescued}


#: rc and status of a run a signal stopped (128 + SIGINT, as a shell reports it; ansible-runner's word),
#: whether ansible-runner stopped ansible-playbook or direct sessions stopped after their batch
CANCELED_RC, CANCELED_STATUS = 130, "canceled"


@dataclass
class PlaybookResult:
    """Outcome of one ansible-runner run."""

    run_id: str
    run_dir: Path
    playbook: str
    rc: int
    status: str
    duration: float
    hosts: dict[str, HostSummary] = field(default_factory=dict)
    results: list[TaskResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    interrupted_by: str | None = None
    """SIGINT or SIGTERM when a signal cancelled the run (ansible-playbook was stopped), else None."""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"

    def unreachable_hosts(self) -> list[str]:
        """Hosts Ansible could not connect to in this run."""
        return sorted({f.host for f in self.failures if f.unreachable})

    @property
    def changed(self) -> int:
        """Changed tasks over all hosts."""
        return sum(h.changed for h in self.hosts.values())

    def failed_hosts(self) -> list[str]:
        return sorted({f.host for f in self.failures})

    def last_failure(self, host: str) -> Failure | None:
        found = [f for f in self.failures if f.host == host]
        return found[-1] if found else None

    def results_of(self, action: str) -> list[TaskResult]:
        """Results of every task that ran module `action` (short or FQCN name)."""
        return [r for r in self.results if r.action == action or r.action.endswith(f".{action}")]

    def summary_line(self) -> str:
        """One line per failed host: host, task, message (for error messages)."""
        return "; ".join(str(self.last_failure(h)) for h in self.failed_hosts())

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "playbook": self.playbook, "rc": self.rc, "status": self.status,
            "duration": round(self.duration, 3),
            "hosts": {name: s.as_dict() for name, s in sorted(self.hosts.items())},
            "failures": [{"host": f.host, "task": f.task, "message": f.message,
                          **({"unreachable": True} if f.unreachable else {})} for f in self.failures],
            **({"interrupted_by": self.interrupted_by} if self.interrupted_by else {}),
        }


class PlaybookInterrupted(Interrupted):
    """SIGINT or SIGTERM arrived while a playbook ran: ansible-playbook was stopped (exit 130).

    Carries the run as far as it went (`result`), so that a caller can put back what the run had
    changed (a deploy restores the hosts that had switched) before the interrupt goes on.
    """

    def __init__(self, result: PlaybookResult) -> None:
        super().__init__(f"{result.playbook} stopped by {result.interrupted_by}", result=result)
        self.run = result


def failure_message(res: Mapping[str, Any]) -> str:
    """The message a person needs from a failed result (never the content of a no_log task)."""
    if res.get(CENSORED_KEY):
        return str(res[CENSORED_KEY])
    for key in ("msg", "reason", "stderr", "module_stderr"):
        value = res.get(key)
        if value:
            return " ".join(str(value).split())[:500]
    return "failed"


#: modules whose task a signal lets finish on every host of the batch before the run is stopped:
#: killed mid-task, a host may switch after Ansible stopped listening, and nobody would know to put
#: it back
HOLDING_ACTIONS = frozenset({"rust_release"})

#: events that start a task (the one before it has ended on every host: the strategy is linear)
TASK_START_EVENTS = frozenset({"playbook_on_task_start", "playbook_on_handler_task_start"})

#: events after which no task runs until the next task start
BETWEEN_TASKS_EVENTS = frozenset({"playbook_on_play_start", "playbook_on_stats", "playbook_on_no_hosts_remaining"})

#: events not kept in the run's artifacts (job_events/): a host's result event already carries
#: when it started the task (`start`, `end`, `duration`). orchestrate's event callback does not
#: write them at all; ansible-runner's did (~40% of a run's events, each a file)
UNKEPT_EVENTS = frozenset({"runner_on_start"})


class EventCollector:
    """Turns ansible-runner events into HostEvents, TaskResults, Failures and the final stats."""

    def __init__(self, on_event: Callable[[HostEvent], None] | None = None,
                 on_start: Callable[[], None] | None = None) -> None:
        self.on_event = on_event
        self.on_start = on_start
        """Called once, when the playbook starts (ansible-playbook has read its extra vars by then;
        output lines before it, inventory warnings say, come earlier and do not count)."""
        self.results: list[TaskResult] = []
        self.failures: list[Failure] = []
        self.hosts: dict[str, HostSummary] = {}
        self.holding = False
        """True while a task of HOLDING_ACTIONS runs: a cancel waits for its end."""

    def __call__(self, event: Mapping[str, Any]) -> bool:
        """ansible-runner's event_handler: returning True keeps the event in the artifacts."""
        kind = str(event.get("event", ""))
        data = event.get("event_data") or {}
        if self.on_start is not None and (kind.startswith(("playbook_on_", "runner_on_"))):
            started, self.on_start = self.on_start, None
            started()
        if kind in UNKEPT_EVENTS:
            return False
        if kind in TASK_START_EVENTS:
            self.holding = str(data.get("task_action") or data.get("resolved_action") or "") in HOLDING_ACTIONS
        elif kind in BETWEEN_TASKS_EVENTS:
            self.holding = False
        if kind == "playbook_on_stats":
            self._stats(data)
            return True
        status = {
            "runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
            "runner_on_skipped": "skipped",
        }.get(kind)
        if status is None:
            return True
        host = str(data.get("host", ""))
        task = str(data.get("task", ""))
        res = data.get("res") or {}
        if not isinstance(res, Mapping):
            res = {}
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status == "failed" and data.get("ignore_errors"):
            status = "ok"
        message = failure_message(res) if status in {"failed", "unreachable"} else ""
        if status in {"failed", "unreachable"}:
            self.failures.append(Failure(host=host, task=task, message=message,
                                         unreachable=status == "unreachable"))
        action = str(data.get("task_action") or data.get("resolved_action") or "")
        self.results.append(TaskResult(host=host, task=task, action=action, status=status, result=dict(res)))
        if self.on_event is not None:
            self.on_event(HostEvent(host=host, task=task, status=status, message=message))
        return True

    def _stats(self, data: Mapping[str, Any]) -> None:
        keys = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
                "skipped": "skipped", "rescued": "rescued"}
        for stat_key, attr in keys.items():
            for host, count in (data.get(stat_key) or {}).items():
                summary = self.hosts.setdefault(str(host), HostSummary())
                setattr(summary, attr, int(count))


# --- extra vars: data, never templates ----------------------------------------------------------

#: Ansible's YAML tag for data that is never templated
UNSAFE_TAG = "!unsafe"


class _UnsafeRoot(dict[str, Any]):
    """The document's top-level mapping, written with UNSAFE_TAG."""


class _UnsafeDumper(yaml.SafeDumper):
    """SafeDumper for extra vars files: the root mapping tagged `!unsafe`, every string double-quoted
    (any character survives, escaped; nothing is folded; a quoted scalar is always a string)."""


def _represent_root(dumper: yaml.SafeDumper, value: _UnsafeRoot) -> yaml.MappingNode:
    return dumper.represent_mapping(UNSAFE_TAG, value)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')


_UnsafeDumper.add_representer(_UnsafeRoot, _represent_root)
_UnsafeDumper.add_representer(str, _represent_str)


def _plain(value: Any, where: str) -> Any:
    """`value` as the builtins the dumper knows (str, int, float, bool, None, list, dict)."""
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum) as its text
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {_plain(key, where): _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"extra var {where}: cannot pass a {type(value).__name__} to Ansible")


def unsafe_yaml(variables: Mapping[str, Any]) -> str:
    """A YAML document of `variables` for `-e @FILE` that Ansible never templates.

    The root mapping is tagged `!unsafe`, which makes every string below it, mapping keys
    included, unsafe for Ansible: data, not a template. (Tagging each string instead would not
    do: Ansible resolves an `!unsafe` scalar as if it were unquoted, so `!unsafe "yes"` would come
    back as True and `!unsafe ""` as None.) Non-ASCII and control characters are written as
    escapes, so the file is ASCII and every value comes back from Ansible's loader as it was
    (pure: property-tested against that loader).
    """
    data = _UnsafeRoot({str(key): _plain(value, str(key)) for key, value in variables.items()})
    return yaml.dump(data, Dumper=_UnsafeDumper, allow_unicode=False, default_flow_style=False,
                     sort_keys=True, width=1 << 30)


def write_private(path: Path, text: str) -> Path:
    """Write `text` to a new mode-0600 file at `path` (replacing an older one)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    return path


def extra_vars_cmdline(files: Sequence[Path]) -> str:
    """ansible-playbook options reading each vars file, in order (pure)."""
    return " ".join(f"-e {shlex.quote('@' + str(path))}" for path in files)


# --- running --------------------------------------------------------------------------------------



def new_run_id() -> str:
    """Sortable, unique run id: UTC time plus a short random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class PlaybookRun:
    """One playbook run: what to run, against which inventory, with which variables."""

    playbook: Path
    inventory: Path
    project_dir: Path
    runs_dir: Path
    """.orchestrate/<env>/runs: the run's private data dir is created under it."""
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    secret_vars: Mapping[str, Any] = field(default_factory=dict)
    """Passed through a temporary file outside the run dir, removed after the run."""
    limit: str | None = None
    tuned: bool = True
    mitogen: bool = False
    """With `tuned`: run under mitogen when it is installed (playbooks tested with it opt in)."""
    run_id: str = field(default_factory=new_run_id)
    timeout: int = 1800
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    """Seconds a host has to answer SSH before it counts as unreachable (per target: see
    orchestrator.fleet.playbooks)."""
    allowed_networks: Sequence[str] | None = None
    """IPv4 networks every host of the inventory must be on (a local fleet's bridge subnet);
    None: no check (cloud hosts). See `check_inventory_addresses`."""
    check: bool = False
    """Ansible's check mode (`--check`): modules that support it report what they would change and
    change nothing; the others are skipped."""


#: the run's (non-secret) extra vars, in its run dir
EXTRA_VARS_FILE = "extravars.yml"

#: names of a run's files in /dev/shm: NAME-PID-* (PID: the orchestrate process; see remove_orphans)
SECRETS_NAME = "orch-secrets"
LOCAL_TEMP_NAME = "orch-ansible"


@contextlib.contextmanager
def secret_vars_file(secret_vars: Mapping[str, Any]) -> Iterator[Path | None]:
    """A 0600 file of `secret_vars` (`unsafe_yaml`) in memory-backed storage (/dev/shm), for `-e @PATH`.

    Deleted on exit at the latest; run_playbook deletes it as soon as the playbook has started,
    i.e. once ansible-playbook has read its extra vars (they are read once, when the CLI sets up,
    before the first event). A process killed before that leaves it to `remove_orphans`, which
    the next run calls: its name carries the pid of the process that wrote it.
    (An anonymous memfd would vanish with the process, but Ansible resolves the path and cannot
    open `/memfd:...`.)
    """
    if not secret_vars:
        yield None
        return
    shm = Path("/dev/shm")
    fd, name = tempfile.mkstemp(prefix=f"{SECRETS_NAME}-{os.getpid()}-", suffix=".yml",
                                dir=str(shm) if shm.is_dir() else None)
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(unsafe_yaml(secret_vars))
        yield path
    finally:
        path.unlink(missing_ok=True)


def _forget(path: Path) -> None:
    """Remove the secrets file once ansible-playbook has read it (the exit of the block removes
    it anyway; a failure here must not stop the run)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def remove_orphans(directory: Path = Path("/dev/shm")) -> list[Path]:
    """Remove the in-memory files and temp dirs of runs whose process is gone (a SIGKILLed
    `orchestrate` cannot clean up after itself); return what was removed."""
    removed = []
    for path in directory.glob("orch-*-*"):
        prefix, _, rest = path.name.partition("-")
        kind, _, rest = rest.partition("-")
        pid = rest.split("-", 1)[0]
        if f"{prefix}-{kind}" not in {SECRETS_NAME, LOCAL_TEMP_NAME} or not pid.isdigit():
            continue
        if Path(f"/proc/{pid}").exists():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # another user's file in the sticky /dev/shm: theirs to remove
                continue
        removed.append(path)
    return removed


@contextlib.contextmanager
def local_temp_dir() -> Iterator[Path]:
    """Ansible's controller-side temp dir for one run, in memory-backed storage, removed on exit.

    Ansible writes module payloads (their arguments, secrets among them, when pipelining is off)
    and rendered templates there before they go to a host: they must never reach a disk.
    """
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix=f"{LOCAL_TEMP_NAME}-{os.getpid()}-", dir=str(shm) if shm.is_dir() else None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[Callable[[], str | None]]:
    """While the block runs, SIGINT and SIGTERM are noted instead of raising; yields a function
    that names the signal received (None before any). The previous handlers come back after.

    run_playbook's cancel rule asks it (once no release task is under way, see HOLDING_ACTIONS):
    the run's loop then stops ansible-playbook (runner_pipe), and the caller sees that a signal, not a failure,
    ended the run.
    Without a callback of ours ansible-runner installs handlers of its own that it never removes:
    every later Ctrl-C of the process, even outside a playbook, would then be swallowed.
    Only the main thread may set handlers; elsewhere (the heal server's workers) nothing is noted.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[str] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, note) for signum in CANCEL_SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def runner_env(settings: AnsibleSettings, cfg_path: Path, local_temp: Path | None = None) -> dict[str, str]:
    """Environment of the ansible-playbook process (pure: unit-tested)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "ANSIBLE_CONFIG": str(cfg_path),
        # the venv's ansible-* programs must win over any other installation
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        # ansible-runner turns host key checking off unless told otherwise; the inventory's
        # ssh args (the environment's known_hosts file, checked strictly) decide instead
        "ANSIBLE_HOST_KEY_CHECKING": "True",
    }
    if local_temp is not None:
        env["ANSIBLE_LOCAL_TEMP"] = str(local_temp)
        # Python's own temp files of ansible-playbook too: in memory, and a short path, because
        # mitogen binds a unix socket there (108 bytes at most) and hangs when it cannot
        env["TMPDIR"] = str(local_temp)
    return env


def _inventory_hosts(group: Any, found: dict[str, Any]) -> None:
    """Collect {host name: host vars} of a YAML inventory group and its children."""
    if not isinstance(group, Mapping):
        return
    for name, host_vars in (group.get("hosts") or {}).items():
        merged = found.setdefault(str(name), {})
        if isinstance(host_vars, Mapping):
            merged.update(host_vars)
    for child in (group.get("children") or {}).values():
        _inventory_hosts(child, found)


def check_inventory_addresses(inventory: Path, allowed_networks: Sequence[str]) -> None:
    """HostError unless every host of the YAML `inventory` is a host address on `allowed_networks`.

    A host's address is its `ansible_host`, else its name. The network and broadcast
    addresses and the network's first address (the bridge's own: the controller) are not
    host addresses; neither is a DNS name, which could resolve anywhere. The network rule:
    traffic goes only to hosts the project created itself.
    """
    import yaml

    networks = [ipaddress.IPv4Network(n) for n in allowed_networks]
    described = ", ".join(str(n) for n in networks) or "none"
    try:
        data = load_yaml(inventory.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HostError(f"{inventory}: cannot read the inventory to check its host addresses: {exc}") from None
    hosts: dict[str, Any] = {}
    for top in (data or {}).values() if isinstance(data, Mapping) else ():
        _inventory_hosts(top, hosts)
    for name, host_vars in sorted(hosts.items()):
        address = str(host_vars.get("ansible_host") or name)
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            ip = None
        if ip is None or not any(
            ip in net and ip not in (net.network_address, net.broadcast_address, net.network_address + 1)
            for net in networks
        ):
            raise HostError(
                f"{inventory}: host {name} has address {address}, which is not a host address on the "
                f"project's own bridge ({described}); refusing to connect (nothing was run)"
            )



def run_playbook(run: PlaybookRun, *, on_event: Callable[[HostEvent], None] | None = None) -> PlaybookResult:
    """Run `run.playbook` with ansible-runner; return the summary (failures are in the result).

    Raises AnsibleError only when Ansible could not run at all (bad playbook path, runner crash),
    HostError before anything runs when `run.allowed_networks` is given and a host of the
    inventory is not on one of them, and PlaybookInterrupted (carrying the result so far) when
    SIGINT or SIGTERM stopped the playbook.
    """
    from orchestrator.tools import runner_pipe  # imports ansible-runner: slow, and not every verb needs it

    if not run.playbook.is_file():
        raise AnsibleError(f"playbook not found: {run.playbook}")
    if not run.inventory.is_file():
        raise AnsibleError(f"inventory not found: {run.inventory} (run `orchestrate up` or `provision` first)")
    if run.allowed_networks is not None:
        check_inventory_addresses(run.inventory, run.allowed_networks)
    settings = AnsibleSettings.tuned(mitogen=run.mitogen) if run.tuned else AnsibleSettings.stock()
    run_dir = run.runs_dir / run.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "ansible.cfg"
    cfg_path.write_text(ansible_cfg_text(settings, roles_path=run.project_dir / "roles",
                                         connect_timeout=run.connect_timeout))
    if settings.control_path_dir:
        private_dir(Path(settings.control_path_dir))
    started = time.monotonic()
    if Path("/dev/shm").is_dir():
        remove_orphans()
    vars_files = [write_private(run_dir / EXTRA_VARS_FILE, unsafe_yaml(run.extra_vars))] if run.extra_vars else []
    with secret_vars_file(run.secret_vars) as secrets_path, local_temp_dir() as local_temp, \
            cancel_on_signals() as signalled:
        collector = EventCollector(on_event, on_start=functools.partial(_forget, secrets_path)
                                   if secrets_path is not None else None)
        kwargs: dict[str, Any] = {
            "private_data_dir": str(run_dir),
            "project_dir": str(run.project_dir),
            "playbook": str(run.playbook),
            "inventory": str(run.inventory),
            "envvars": runner_env(settings, cfg_path, local_temp),
            "event_handler": collector,
            "quiet": True,
            "suppress_env_files": True,
            "timeout": run.timeout,
            "ident": run.run_id,
        }
        # never ansible-runner's `extravars`: it passes them as JSON, which Ansible templates
        files = [*vars_files, *([secrets_path] if secrets_path is not None else [])]
        cmdline = " ".join(filter(None, [extra_vars_cmdline(files), "--check" if run.check else ""]))
        if cmdline:
            kwargs["cmdline"] = cmdline
        if run.limit:
            kwargs["limit"] = run.limit
        try:
            # a signal stops the run between tasks, never inside a release switch
            outcome = runner_pipe.run(kwargs, cancel=lambda: signalled() is not None and not collector.holding,
                                      record_env=_recorded_env)
        except Exception as exc:  # ansible-runner raises bare exceptions for configuration problems
            raise AnsibleError(f"ansible-runner could not start {run.playbook.name}: {exc}") from exc
        # a signal that came while the last task held the cancel still stops the run (as a
        # signal during a direct session's last batch does): what switched is put back
        interrupted_by = signalled()
    duration = time.monotonic() - started
    rc, status = outcome.rc, outcome.status
    if interrupted_by is not None:
        rc, status = CANCELED_RC, CANCELED_STATUS
    result = PlaybookResult(
        run_id=run.run_id, run_dir=run_dir, playbook=run.playbook.name, rc=rc, status=status,
        duration=duration, hosts=collector.hosts, results=collector.results, failures=collector.failures,
        interrupted_by=interrupted_by,
    )
    if interrupted_by is not None:
        raise PlaybookInterrupted(result)
    return result


def _recorded_env(env: Mapping[str, str]) -> dict[str, str]:
    """What the run's `command` record keeps of the process environment: Ansible's and
    ansible-runner's settings; the rest may hold cloud credentials (pure)."""
    return {key: value for key, value in env.items() if key.startswith(("ANSIBLE_", "RUNNER_"))}
