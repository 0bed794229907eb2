"""The one place that runs a project playbook against an environment.

Every playbook run of an environment (deploy, rollback, backup, restore, lb, monitoring,
remediations) goes through `run_env_playbook`: the environment's inventory, its runs directory,
the address guard of its fleet, the tuned settings, the connect timeout of its target, and a run
id that says what ran. `unreachable_hint` says what to run when hosts did not answer. After each
run the runs directory keeps the newest `keep_run_folders` folders of the environment file
(default 50); a folder whose run has not finished is never removed while it may still run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.fleet.inventory import allowed_networks
from orchestrator.tools.ansible import HostEvent, PlaybookResult, PlaybookRun, new_run_id, run_playbook

EventSink = Callable[[HostEvent], None]

#: Seconds a host has to answer SSH (TCP connect and handshake) before it counts as unreachable,
#: per target. A local fleet's hosts are on a bridge of this machine: one that does not answer in
#: 2 s is down, and waiting Ansible's 15 s for it only delays the error. Cloud hosts are across a
#: network (and a fresh instance's sshd may be slow to start).
CONNECT_TIMEOUTS = {"local": 2, "aws": 10}


def connect_timeout(loaded: LoadedEnvironment) -> int:
    """The connect timeout of `loaded`'s target (CONNECT_TIMEOUTS)."""
    return CONNECT_TIMEOUTS[loaded.env.target]


def unreachable_hint(loaded: LoadedEnvironment, hosts: Sequence[str]) -> str:
    """What to run when `hosts` of `loaded` did not answer SSH within the connect timeout."""
    names = ", ".join(hosts)
    them = "it" if len(hosts) == 1 else "them"
    down = f"unreachable: {names} did not answer SSH within {connect_timeout(loaded)} s"
    if loaded.env.target == "local":
        return (f"{down}: `orchestrate provision {loaded.name}` boots {them} again; `orchestrate up {loaded.name}` "
                f"converges the environment (boots, deploys the release, checks every host's health)")
    return (f"{down}: `orchestrate hosts {loaded.name}` shows the instances' states; start a stopped instance, or "
            f"`orchestrate provision {loaded.name}` replaces a terminated one; `orchestrate up {loaded.name}` "
            f"converges the environment")


def env_playbook_run(loaded: LoadedEnvironment, playbook: str, extra_vars: Mapping[str, Any], *,
                     run_id: str | None = None, tuned: bool = True, mitogen: bool = False,
                     secret_vars: Mapping[str, Any] | None = None, limit: str | None = None,
                     timeout: int | None = None, check: bool = False) -> PlaybookRun:
    """The PlaybookRun of `playbooks/<playbook>` against `loaded`'s inventory (pure)."""
    return PlaybookRun(
        playbook=loaded.project_dir / "playbooks" / playbook, inventory=loaded.paths.inventory,
        project_dir=loaded.project_dir, runs_dir=loaded.paths.runs,
        extra_vars=dict(extra_vars), secret_vars=dict(secret_vars or {}), limit=limit, tuned=tuned,
        mitogen=mitogen, run_id=run_id or f"{new_run_id()}-{playbook.removesuffix('.yml')}",
        allowed_networks=allowed_networks(loaded), connect_timeout=connect_timeout(loaded), check=check,
        **({"timeout": timeout} if timeout is not None else {}),
    )


def run_env_playbook(loaded: LoadedEnvironment, playbook: str, extra_vars: Mapping[str, Any], *,
                     on_event: EventSink | None = None, run_id: str | None = None, tuned: bool = True,
                     mitogen: bool = False, secret_vars: Mapping[str, Any] | None = None,
                     limit: str | None = None, timeout: int | None = None, check: bool = False) -> PlaybookResult:
    """Run `playbooks/<playbook>` against `loaded` (see `env_playbook_run`); the result, never raises
    for a failed play (the caller decides what a failure means; `unreachable_hint` helps it say what
    to do about hosts that did not answer). SIGINT or SIGTERM raises PlaybookInterrupted."""
    run = env_playbook_run(loaded, playbook, extra_vars, run_id=run_id, tuned=tuned, mitogen=mitogen,
                           secret_vars=secret_vars, limit=limit, timeout=timeout, check=check)
    try:
        return run_playbook(run, on_event=on_event)
    finally:
        rotate_run_folders(loaded.paths.runs, loaded.env.keep_run_folders)


#: a run folder without a result this old belongs to a run that died (the playbook timeout is 30 min)
STALE_AFTER = 2 * 3600.0


def folders_to_remove(folders: Mapping[str, tuple[float, bool]], keep: int, now: float) -> list[str]:
    """Which run folders go (pure): all but the newest `keep` by modification time, except those
    whose run has not finished (no result yet) unless they are older than STALE_AFTER.

    `folders`: {name: (mtime, finished)}.
    """
    ordered = sorted(folders.items(), key=lambda item: (item[1][0], item[0]), reverse=True)
    return sorted(name for name, (mtime, finished) in ordered[keep:] if finished or now - mtime > STALE_AFTER)


def rotate_run_folders(runs_dir: Path, keep: int) -> list[str]:
    """Remove the run folders beyond the newest `keep` under `runs_dir`; the names removed."""
    try:
        entries = [p for p in runs_dir.iterdir() if p.is_dir()]
    except OSError:
        return []
    if len(entries) <= keep:
        return []
    found = {}
    for path in entries:
        try:
            # ansible-runner writes artifacts/<id>/rc when the playbook has ended
            found[path.name] = (path.stat().st_mtime, any(path.glob("artifacts/*/rc")))
        except OSError:
            continue
    removed = folders_to_remove(found, keep, time.time())
    for name in removed:
        shutil.rmtree(runs_dir / name, ignore_errors=True)
    return removed
