"""Helpers of the `orchestrate up` suites: read the journal, ask the hosts, crash a run (the CLI:
tests/support/cli.py).

Every check asks the hosts themselves over HTTP, and the journal through `orchestrate runs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.cli import run_orchestrate
from tests.support.fleet import FleetEnv

FAST = {"service": {"health": {"timeout": "5s", "interval": "100ms"}}}


def password_file(fleet: FleetEnv) -> Path:
    """dev's vault password file (public on purpose) in the fleet's project copy."""
    return Path(fleet.project_dir) / "inventories/dev/.vault-password-dev"


def up(fleet: FleetEnv, release: Path, *extra: str, extra_env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    return run_orchestrate(fleet.project_dir, "up", fleet.env_name, "--release", str(release), "--json", *extra,
                           env=extra_env)


def runs(fleet: FleetEnv) -> list[dict[str, Any]]:
    proc = run_orchestrate(fleet.project_dir, "runs", fleet.env_name, "--json", "--limit", "100")
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout)["runs"])


def run_state(fleet: FleetEnv, run_id: str) -> str:
    return str(next(r["state"] for r in runs(fleet) if r["id"] == run_id))


def run_detail(fleet: FleetEnv, run_id: str) -> dict[str, Any]:
    """`orchestrate runs ENV RUN_ID --json`: the run with its steps."""
    proc = run_orchestrate(fleet.project_dir, "runs", fleet.env_name, run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return dict(data.get("run", data))


def audit_entries(fleet: FleetEnv) -> list[dict[str, Any]]:
    proc = run_orchestrate(fleet.project_dir, "audit", fleet.env_name, "--json", "--limit", "200")
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout)["entries"])


def app_addresses(fleet: FleetEnv) -> list[str]:
    inventory = json.loads(run_orchestrate(fleet.project_dir, "hosts", fleet.env_name, "--json").stdout)
    return [h["address"] for h in inventory["hosts"] if "app" in h["groups"]]



def fleet_versions(fleet: FleetEnv) -> dict[str, tuple[int, str]]:
    """address -> (/healthz status, version from /version)."""
    found = {}
    for address in app_addresses(fleet):
        health, _ = fleet.http_get(address, "/healthz")
        _, body = fleet.http_get(address, "/version")
        found[address] = (health, json.loads(body)["version"])
    return found


def serving(fleet: FleetEnv, version: str) -> set[str]:
    """Addresses whose service answers /version with `version` now (a host restarting is not)."""
    found = set()
    for address in app_addresses(fleet):
        try:
            status, body = fleet.http_get(address, "/version")
            if status == 200 and json.loads(body)["version"] == version:
                found.add(address)
        except (OSError, ValueError, KeyError):
            continue
    return found


#: an after_switch hook that holds each host's switch for a second: a rollout of one host per batch
#: then has a middle long enough to be seen from outside (a host serving the new release while
#: the next ones have not switched yet)
SLOW_SWITCH = {"service": {"hooks": {"after_switch": ["sleep", "1"]}}}


def assert_fleet_on(fleet: FleetEnv, version: str) -> None:
    found = fleet_versions(fleet)
    assert found and all(v == (200, version) for v in found.values()), found


def assert_fleet_healthy_on_one_release(fleet: FleetEnv, allowed: set[str]) -> str:
    found = fleet_versions(fleet)
    assert found and all(status == 200 for status, _ in found.values()), found
    versions = {v for _, v in found.values()}
    assert len(versions) == 1 and versions <= allowed, found
    return versions.pop()


def journal_step_state(fleet: FleetEnv, step: str) -> str | None:
    """State of `step` in the newest run, read straight from the journal (read-only)."""
    db = fleet.state_dir / "journal.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(
                "SELECT s.state FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.name = ?"
                " ORDER BY r.started DESC LIMIT 1", (step,)).fetchone()
    except sqlite3.OperationalError:  # created, schema not written yet
        return None
    return str(row[0]) if row else None


def newest_run(fleet: FleetEnv) -> tuple[str, str] | None:
    """(id, stored state) of the newest run, read straight from the journal (read-only)."""
    db = fleet.state_dir / "journal.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT id, state FROM runs ORDER BY rowid DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # created, schema not written yet
        return None
    return (str(row[0]), str(row[1])) if row else None


# --- crashing a run: SIGKILL to every process of it -------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")


def kill_run(root: int) -> set[int]:
    """SIGKILL `root` and every process of its run, like a power cut, and wait until they are gone.

    `killpg` is not enough: ansible-runner starts ansible-playbook on a pty in a session of its
    own, and ssh control masters leave their parent. So: every descendant of `root`, and every
    process in a session one of them leads, each stopped first (no new child escapes), then killed.
    """
    mine = os.getsid(0)
    members: set[int] = set()
    frontier = {root}
    while frontier:
        for pid in frontier:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        members |= frontier
        table = _proc_table()
        sessions = {table[p][1] for p in members if p in table} - {mine, 0}
        frontier = {pid for pid, (ppid, sid) in table.items()
                    if pid not in members and pid != os.getpid() and (ppid in members or sid in sessions)}
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in members):
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {[p for p in members if not _gone(p)]}"
        time.sleep(0.05)
    return members


def job_events(state_dir: Path, exclude: set[str]) -> list[dict[str, Any]]:
    """ansible-runner job events of the playbook runs under state_dir/runs/ not in `exclude`."""
    events = []
    for run_dir in sorted((state_dir / "runs").glob("*")):
        if run_dir.name in exclude:
            continue
        for path in sorted(run_dir.glob("artifacts/*/job_events/*.json")):
            try:
                events.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # written atomically, but a run dir may be pruned meanwhile
                continue
    return events


def run_dirs(state_dir: Path) -> set[str]:
    runs_dir = state_dir / "runs"
    return {p.name for p in runs_dir.iterdir()} if runs_dir.is_dir() else set()


def cron_json(log: str) -> dict[str, Any]:
    """The last JSON object `orchestrate ... --json` wrote into a log shared with its stderr."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    lines = log.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    for offset, line in zip(offsets, lines, strict=False):
        if line.rstrip("\n") == "{":
            try:
                value, _ = decoder.raw_decode(log, offset)
            except ValueError:
                continue
            if isinstance(value, dict):
                found = value
    assert found is not None, log[-2000:]
    return found
