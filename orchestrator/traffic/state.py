"""The traffic split of an environment: which colour serves, which is idle, the weights, and the
release each colour runs.

The truth is HAProxy's runtime state on the LB host (orchestrator.traffic.lb.LoadBalancer
.traffic_state reads it before any traffic move); `.orchestrate/ENV/traffic.json` is this
controller's cache of it, plus the history the load balancer cannot hold: which colour a switch
back returns to, and the release of each colour. `from_runtime` merges the two (pure).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.files import atomic_write
from orchestrator.fleet.inventory import Host, colour_halves
from orchestrator.ids import is_release_id, shown

Color = Literal["blue", "green"]


COLORS: tuple[Color, Color] = ("blue", "green")


STATE_FILE = "traffic.json"


FULL = 100


@dataclass
class TrafficState:
    """Weights per app host, which colour serves, and the history of the last switches."""

    weights: dict[str, int] = field(default_factory=dict)
    active: Color | None = None
    previous: Color | None = None
    """The colour that served before the last switch (the target of a switch back)."""
    releases: dict[str, str] = field(default_factory=dict)
    """Release per colour, as far as traffic releases know."""

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "active": self.active, "previous": self.previous,
                "releases": self.releases}


def colors(hosts: list[Host]) -> dict[Color, list[Host]]:
    """Blue: the app hosts at even positions in name order; green: the odd ones."""
    blue, green = colour_halves(hosts)
    return {"blue": blue, "green": green}


def other(color: Color) -> Color:
    return "green" if color == "blue" else "blue"


def split_weights(new: list[str], old: list[str], percent: int) -> dict[str, int]:
    """HAProxy weights (0-256) giving the `new` servers `percent`% of the requests together.

    Per-server weights are scaled by the size of the other side so that the share is exact
    whatever the colours' sizes, then reduced to fit HAProxy's range.
    """
    if not 0 <= percent <= FULL:
        raise UsageError(f"{percent} is not a percentage")
    if not new or not old:
        raise UsageError("both colours need at least one host")
    w_new, w_old = percent * len(old), (FULL - percent) * len(new)
    divisor = math.gcd(w_new, w_old) or 1
    w_new, w_old = w_new // divisor, w_old // divisor
    top = max(w_new, w_old)
    if top > 256:
        w_new, w_old = round(w_new * 256 / top), round(w_old * 256 / top)
        # rounding must not hide a side that should get some traffic
        w_new = max(w_new, 1) if percent > 0 else 0
        w_old = max(w_old, 1) if percent < FULL else 0
    weights = {name: w_new for name in new}
    weights.update({name: w_old for name in old})
    return weights


def served_share(weights: Mapping[str, int], names: list[str]) -> float:
    """Share of the requests the servers `names` get under `weights` (round robin)."""
    total = sum(weights.values())
    return sum(weights.get(n, 0) for n in names) / total if total else 0.0


def state_path(loaded: LoadedEnvironment) -> Path:
    return loaded.paths.traffic


def read_state(loaded: LoadedEnvironment) -> TrafficState:
    path = state_path(loaded)
    if not path.exists():
        return TrafficState()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrafficError(f"{path}: unreadable traffic state: {exc}") from None
    releases = dict(data.get("releases") or {})
    # the file is read back into deploys and rollbacks: only colours and whole release ids pass
    for color, release in releases.items():
        if color not in COLORS or not is_release_id(release):
            raise TrafficError(f"{path}: releases: {shown(color)}: {shown(release)} is not a colour's release id")
    for key in ("active", "previous"):
        if data.get(key) not in (None, *COLORS):
            raise TrafficError(f"{path}: {key}: {shown(data.get(key))} is not one of blue, green")
    return TrafficState(weights={str(k): int(v) for k, v in (data.get("weights") or {}).items()},
                        active=data.get("active"), previous=data.get("previous"), releases=releases)


def write_state(loaded: LoadedEnvironment, state: TrafficState) -> None:
    path = state_path(loaded)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(state.as_dict(), indent=2) + "\n")


def from_runtime(weights: Mapping[str, int], groups: Mapping[Color, list[str]], cached: TrafficState) -> TrafficState:
    """The traffic state from HAProxy's running `weights` of the app hosts (the truth), with what
    only the cache knows (pure).

    - active: the colour that gets the traffic; when both get some (a canary stopped half-way, or
      no traffic release yet), the one with the larger share, else the cache's, else blue;
    - previous (the colour a switch back returns to): the cache's when the cache agrees with
      HAProxy (same serving colour, and the previous colour drained); without such a cache, the
      colour HAProxy gives weight 0 while the other serves, since its hosts keep their release;
    - releases: the cache's (the load balancer does not know them).
    """
    share = {color: served_share(weights, names) for color, names in groups.items()}
    blue, green = share.get("blue", 0.0), share.get("green", 0.0)
    if blue != green:
        active: Color = "blue" if blue > green else "green"
    else:
        active = cached.active or "blue"
    drained = [c for c in COLORS if c != active and share.get(c, 0.0) == 0 and share.get(active, 0.0) > 0]
    agrees = cached.active == active and (cached.previous is None or cached.previous in drained)
    previous: Color | None = cached.previous if agrees else (drained[0] if drained else None)
    return TrafficState(weights={name: int(weights[name]) for names in groups.values() for name in names
                                 if name in weights},
                        active=active, previous=previous, releases=dict(cached.releases))


class TrafficError(OrchestratorError):
    """The load balancer could not be driven (SSH, helper, missing LB host)."""
