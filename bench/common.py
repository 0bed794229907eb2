"""Helpers shared by the benchmarks: builds of the example service, fleets, the CLI, memory sampling.

Fleets come from the tests' FleetFactory (tests/support/fleet.py): a copied
project under /var/tmp/orchestrate-tests with a unique host prefix and bridge and a reserved
10.214.X.0/24 subnet, so a benchmark never collides with the fleets of test runs going on at the
same time, and every host, bridge and reservation is removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repo_root import REPO

from tests.support.builds import BINARY, EXAMPLE, build_example, copy_example
from tests.support.cli import cli_env, orchestrate_argv
from tests.support.fleet import FleetEnv, FleetFactory

VENV_BIN = Path(sys.executable).parent
#: builds of the example service, keyed by a hash of its sources (reused by later runs)
BUILD_CACHE = Path("/var/tmp/orchestrate-bench/builds")

__all__ = ["REPO", "Builds", "FleetEnv", "Fleets", "RunOutcome", "load_average", "machine_info", "run_orchestrate"]


# --- the machine ----------------------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: `uname -m`, CPUs, memory, kernel, load average now."""
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    return {
        "arch": platform.machine(),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "load_average_start": load_average(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- builds of the example service -----------------------------------------------------------------


@dataclass(frozen=True)
class Builds:
    """v1 (0.1.0), v2 (0.2.0) and broken (0.1.0 whose /healthz answers 500), as binaries."""

    v1: Path
    v2: Path
    broken: Path


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([EXAMPLE / "Cargo.toml", EXAMPLE / "Cargo.lock", *(EXAMPLE / "src").rglob("*.rs")]):
        if path.is_file():
            digest.update(path.relative_to(EXAMPLE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def builds() -> Builds:
    """Build (or reuse) the three builds the benchmarks deploy (not timed)."""
    base = BUILD_CACHE / _sources_digest()
    wanted = {"v1": ("0.1.0", False, ()), "v2": ("0.2.0", True, ()), "broken": ("0.1.0", False, ("broken",))}
    found: dict[str, Path] = {}
    for name, (version, fix_tests, features) in wanted.items():
        project = base / name
        binary = project / BINARY
        if not binary.is_file():
            log(f"building the example service ({name}) ...")
            if project.exists():
                import shutil

                shutil.rmtree(project)
            copy_example(project, version, fix_tests=fix_tests)
            build_example(project, *features)
        found[name] = binary
    return Builds(**found)


# --- fleets ---------------------------------------------------------------------------------------


class Fleets:
    """Throwaway fleets (the tests' FleetFactory); everything is destroyed on exit."""

    def __init__(self, label: str) -> None:
        self._factory = FleetFactory(f"bench-{os.getpid()}-{label}")

    def boot(self, **kwargs: Any) -> FleetEnv:
        """A booted fleet with its inventory written (see FleetFactory.prepare for the arguments)."""
        return self._factory.boot(**kwargs)

    def prepare(self, **kwargs: Any) -> FleetEnv:
        """A copied project with a unique fleet in its env file, nothing booted."""
        return self._factory.prepare(**kwargs)

    def __enter__(self) -> Fleets:
        return self

    def __exit__(self, *exc: object) -> None:
        self._factory.close()


# --- running orchestrate --------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """One `orchestrate` process: wall time, exit code, output, and its memory."""

    argv: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_kib: int = 0
    """VmHWM of the orchestrate process itself (its own peak resident set)."""
    max_rss_wait4_kib: int = 0
    """ru_maxrss from wait4: the largest single process of the tree (orchestrate or a descendant)."""
    peak_tree_rss_kib: int = 0
    """Largest sum of the resident sets of the process and all its descendants, sampled."""
    samples: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.stdout)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def check(self, *codes: int) -> RunOutcome:
        if self.returncode not in (codes or (0,)):
            raise RuntimeError(f"{' '.join(self.argv[2:])} exited {self.returncode}: {self.stderr[-1500:]}")
        return self


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


class _Sampler(threading.Thread):
    """Polls a process tree's memory until told to stop (0.2 s period: cheap, ~1 ms per sample)."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak_self = 0
        self.peak_tree = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_self = max(self.peak_self, _status_kib(self.pid, "VmHWM"))
            self.peak_tree = max(self.peak_tree, sum(_status_kib(p, "VmRSS") for p in _descendants(self.pid)))
            self.samples += 1
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_orchestrate(project: Path, *args: str, timeout: float = 1800, sample_memory: bool = False,
                    env: Mapping[str, str] | None = None) -> RunOutcome:
    """Run `orchestrate --project-dir PROJECT ARGS...` (stdout and stderr captured), timed.

    With `sample_memory`, the process tree's memory is polled while it runs and wait4's
    ru_maxrss is kept.
    """
    argv = orchestrate_argv(project, *args)
    with open(os.devnull, "rb") as stdin, _temp_output() as out, _temp_output() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err, env=cli_env(project, env))
        sampler = _Sampler(proc.pid) if sample_memory else None
        if sampler is not None:
            sampler.start()
        deadline = started + timeout
        status, usage = 0, None
        while True:
            waited, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if waited == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sampler is not None:
            sampler.stop()
        out.seek(0)
        err.seek(0)
        outcome = RunOutcome(argv=argv, seconds=elapsed, returncode=proc.returncode,
                             stdout=out.read().decode(errors="replace"), stderr=err.read().decode(errors="replace"))
    if sampler is not None:
        outcome.peak_rss_kib = sampler.peak_self
        outcome.peak_tree_rss_kib = sampler.peak_tree
        outcome.samples = sampler.samples
        outcome.max_rss_wait4_kib = int(usage.ru_maxrss) if usage is not None else 0
    return outcome


@contextlib.contextmanager
def _temp_output() -> Iterator[Any]:
    import tempfile

    with tempfile.TemporaryFile() as handle:
        yield handle


def deploy_cli(fleet: FleetEnv, binary: Path, *, stock: bool = False, sample_memory: bool = False,
               version: str | None = None, env: Mapping[str, str] | None = None) -> RunOutcome:
    """`orchestrate deploy ENV --release BINARY --json --skip-backup` (`--stock-ansible`: stock settings;
    `version`: `--version VERSION`, a release id of its own, so that the binary is shipped again).

    The figures are about the deploy itself: the backup `deploy` takes first by default is a
    separate playbook run (always with tuned settings) that a raw deploy.yml run does not do.
    """
    args = ["deploy", fleet.env_name, "--release", str(binary), "--json", "--skip-backup"]
    if stock:
        args.append("--stock-ansible")
    if version is not None:
        args += ["--version", version]
    return run_orchestrate(fleet.project_dir, *args, sample_memory=sample_memory, env=env).check()


def expect_state(outcome: RunOutcome, *states: str) -> RunOutcome:
    state = outcome.json().get("state")
    if state not in states:
        raise RuntimeError(f"{' '.join(outcome.argv[2:])}: state {state!r}, expected {' or '.join(states)}")
    return outcome


def mib(kib: int) -> float:
    return kib / 1024


def rewrite_secret_args(argv: list[str], secrets_file: Path | None) -> list[str]:
    """Point an ansible-playbook argv's `-e @/dev/shm/orch-secrets-*.json` at `secrets_file`."""
    out = []
    for arg in argv:
        if arg.startswith("@") and "orch-secrets-" in arg:
            if secrets_file is None:
                raise RuntimeError("the run passed secrets but none were given for the raw run")
            arg = f"@{secrets_file}"
        out.append(arg)
    return out


def raw_playbook_env(recorded: Mapping[str, str]) -> dict[str, str]:
    """The environment of a raw ansible-playbook run: the run's own Ansible settings (ANSIBLE_CONFIG
    and what the adapter sets), without ansible-runner's event callback and fact cache."""
    # (and without the run's own local temp dir, which was removed when that run ended)
    runner_only = {"ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CACHE_PLUGIN",
                   "ANSIBLE_CACHE_PLUGIN_CONNECTION", "ANSIBLE_LOCAL_TEMP"}
    env = dict(os.environ)
    env.update({k: v for k, v in recorded.items() if k.startswith("ANSIBLE_") and k not in runner_only})
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    return env
