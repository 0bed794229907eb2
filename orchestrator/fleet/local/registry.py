"""The machine-wide registry of local hosts (name, bridge, host dir) under /var/lib/orchestrate:
what garbage collection walks to find hosts whose project is gone.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import HostError
from orchestrator.files import file_lock

if TYPE_CHECKING:
    pass

#: Machine-wide registry of hosts (name -> bridge, host dir): host names and bridges are
#: global on the machine, so two fleets may not share a name, and a bridge is deleted when
#: no registered host uses it any more.
REGISTRY_DIR = Path("/var/lib/orchestrate/hosts")


LOCK_DIR = Path("/var/lib/orchestrate/locks")


def registry_entries(registry_dir: Path = REGISTRY_DIR) -> list[dict[str, Any]]:
    """Every host registered on this machine (name, bridge, host_dir)."""
    entries = []
    if registry_dir.is_dir():
        for path in sorted(registry_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                entries.append(json.loads(path.read_text()))
    return entries


def _register(name: str, bridge: str, host_dir: Path) -> None:
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    path = REGISTRY_DIR / f"{name}.json"
    with file_lock(LOCK_DIR / "registry.lock"):
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                existing = json.loads(path.read_text())
                if existing.get("host_dir") != str(host_dir) and Path(existing.get("host_dir", "")).is_dir():
                    raise HostError(
                        f"host name {name} is already used by another fleet ({existing['host_dir']}); "
                        "choose another host_prefix"
                    )
        path.write_text(json.dumps({"name": name, "bridge": bridge, "host_dir": str(host_dir)}) + "\n")


def _unregister(name: str) -> None:
    with file_lock(LOCK_DIR / "registry.lock"):
        (REGISTRY_DIR / f"{name}.json").unlink(missing_ok=True)


