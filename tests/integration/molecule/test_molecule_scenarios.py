"""Every Molecule scenario under molecule/ runs `molecule test` on real local hosts.

The scenarios boot their own systemd-nspawn hosts (molecule/resources/create.yml calls
tests/support/molecule_hosts.py), so these tests only start `molecule test -s NAME` and judge the
outcome: exit status 0, and each step of the scenario's test sequence reported successful. The
`default` scenario runs as `molecule test`, without -s: what an operator who types just that gets.

They run concurrently (ORCHESTRATE_MOLECULE_WORKERS at a time, default 4: all of them): much of
a scenario's wall time is spent waiting (process start-up, ssh, health gates), and each scenario
has a bridge, subnet and ephemeral directory of its own. Measured on the two-core box under
other load: 1:50 for all four at once, 2:52 two at a time, ~5:30 one after the other.
Logs go to /var/tmp/orchestrate-molecule/runs/<run>/<scenario>.log (kept when a scenario fails).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.molecule_hosts import BASE_DIR, base_dir

pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
MOLECULE_DIR = REPO / "molecule"
RUNS_DIR = BASE_DIR / "runs"
SCENARIOS = sorted(p.parent.name for p in MOLECULE_DIR.glob("*/molecule.yml"))
#: what `molecule test` runs when no scenario is named
DEFAULT_SCENARIO = "default"
#: a whole scenario on a busy two-core machine takes 1-2 minutes; this bounds a hung one
SCENARIO_TIMEOUT = 600
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ScenarioRun:
    """One finished `molecule test -s NAME`."""

    name: str
    returncode: int
    log: Path
    seconds: float

    @property
    def text(self) -> str:
        return ANSI.sub("", self.log.read_text(errors="replace"))

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text.splitlines()[-lines:])

    def step_results(self) -> dict[str, list[str]]:
        """Step -> outcomes molecule reported for it (`Executed: Successful`, ...), in order."""
        found: dict[str, list[str]] = {}
        # `NAME ➜ STEP: Executed: X`, or `[NAME > STEP] Executed: X` when molecule prints no markup
        pattern = rf"(?:{re.escape(self.name)} ➜ (\w+):|\[{re.escape(self.name)} > (\w+)\]) Executed: (\w[\w ]*)"
        for match in re.finditer(pattern, self.text):
            found.setdefault(match.group(1) or match.group(2), []).append(match.group(3).strip())
        return found


def test_sequence(name: str) -> list[str]:
    """The scenario's test_sequence from its molecule.yml."""
    data = yaml.safe_load((MOLECULE_DIR / name / "molecule.yml").read_text())
    return list(data["scenario"]["test_sequence"])


test_sequence.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def molecule_env(ephemeral: Path) -> dict[str, str]:
    """Environment of a molecule run: the venv first on PATH (molecule calls ansible-config),
    cargo reachable, and an ephemeral directory of this run's own (not one keyed by the project
    directory's name, which two checkouts or two sessions would share)."""
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
    cargo_bin = Path.home() / ".cargo" / "bin"
    path = os.pathsep.join([str(venv_bin), str(cargo_bin), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral)}


def molecule_test_argv(molecule: str, name: str) -> list[str]:
    """`molecule test -s NAME`; plain `molecule test` for the default scenario."""
    return [molecule, "test"] if name == DEFAULT_SCENARIO else [molecule, "test", "-s", name]


def run_scenario(name: str, run_dir: Path) -> ScenarioRun:
    """`molecule test [-s NAME]` from the project root; its output goes to RUN_DIR/NAME.log."""
    ephemeral = run_dir / name
    log = run_dir / f"{name}.log"
    env = molecule_env(ephemeral)
    molecule = shutil.which("molecule", path=env["PATH"]) or "molecule"
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(molecule_test_argv(molecule, name), cwd=REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=SCENARIO_TIMEOUT, check=False)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = -1
            # a killed run may have left its hosts: destroy them the way molecule would
            subprocess.run([molecule, "destroy", "-s", name], cwd=REPO, env=env, stdout=out,
                           stderr=subprocess.STDOUT, timeout=120, check=False)
    return ScenarioRun(name, returncode, log, time.monotonic() - started)


@pytest.fixture(scope="session")
def scenario_runs(request: pytest.FixtureRequest) -> Iterator[dict[str, Future[ScenarioRun]]]:
    """Start the selected scenarios (a few at a time) once per session; each test waits for its own."""
    if os.geteuid() != 0:
        pytest.skip("molecule scenarios boot local hosts: they need root")
    base_dir()
    RUNS_DIR.mkdir(mode=0o700, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=RUNS_DIR))
    workers = max(1, int(os.environ.get("ORCHESTRATE_MOLECULE_WORKERS", "4")))
    pool = ThreadPoolExecutor(max_workers=workers)
    selected = {item.callspec.params["name"] for item in request.session.items
                if hasattr(item, "callspec") and "name" in item.callspec.params}
    futures = {name: pool.submit(run_scenario, name, run_dir) for name in SCENARIOS if name in selected}
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        failed = [n for n, f in futures.items() if not f.done() or f.cancelled() or f.exception()
                  or f.result().returncode != 0]
        if not failed:
            shutil.rmtree(run_dir, ignore_errors=True)  # keep the logs of failures only


def test_every_role_scenario_is_collected() -> None:
    assert set(SCENARIOS) >= {"rust_service", "backup_restore", "rollback", "monitoring", "haproxy", DEFAULT_SCENARIO}
    # the default scenario covers both roles the stack is made of, on hosts of both groups
    default = yaml.safe_load((MOLECULE_DIR / DEFAULT_SCENARIO / "molecule.yml").read_text())
    assert {g for p in default["platforms"] for g in p["groups"]} == {"app", "lb"}
    converge = (MOLECULE_DIR / DEFAULT_SCENARIO / "converge.yml").read_text()
    assert "role: rust_service" in converge and "role: haproxy" in converge


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name: str, scenario_runs: dict[str, Future[ScenarioRun]]) -> None:
    run = scenario_runs[name].result()
    assert run.returncode == 0, f"molecule test -s {name} exited {run.returncode} ({run.log}):\n{run.tail()}"
    results = run.step_results()
    for step in test_sequence(name):
        assert results.get(step), f"{name}: step {step} did not run ({run.log})"
        assert all(r == "Successful" for r in results[step]), f"{name}: {step}: {results[step]} ({run.log})"
