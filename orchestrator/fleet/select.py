"""Which hosts a verb works on: names or shell-style globs, and groups (pure).

`orchestrate logs ENV dev-app-1`, `exec ENV --group lb`, `deploy ENV --limit 'dev-app-*'`: every
pattern must match a host of the environment, or the request is refused before anything runs,
with the hosts it could have named.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from orchestrator.errors import UsageError
from orchestrator.fleet.inventory import STANDARD_GROUPS, Host

#: glob characters: a pattern with one of them may match several hosts
_GLOB = set("*?[")


def split_patterns(values: Iterable[str]) -> list[str]:
    """Patterns given as several words or comma-separated (`a,b c`), without empties (pure)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB for c in pattern)


def match_hosts(hosts: Sequence[Host], patterns: Sequence[str], *, what: str = "host") -> list[Host]:
    """The hosts whose name matches any of `patterns` (names or globs), in `hosts`' order.

    UsageError naming the pattern and the valid names when a pattern matches nothing.
    """
    chosen: set[str] = set()
    for pattern in patterns:
        found = [h.name for h in hosts if fnmatch.fnmatchcase(h.name, pattern)]
        if not found:
            names = ", ".join(h.name for h in hosts) or "none"
            kind = "matches no" if is_glob(pattern) else "is not an"
            raise UsageError(f"{pattern!r} {kind} {what} of this environment ({what}s: {names})")
        chosen.update(found)
    return [h for h in hosts if h.name in chosen]


def select_hosts(hosts: Sequence[Host], patterns: Sequence[str] = (), group: str | None = None, *,
                 default_group: str | None = "app") -> list[Host]:
    """The hosts a verb works on: those of `group` (else `default_group` when no pattern is given,
    else all), narrowed to `patterns`. UsageError for an unknown group or a pattern that matches
    nothing, and when nothing is left."""
    pool = list(hosts)
    if group is not None:
        known = sorted({g for h in hosts for g in h.groups} | set(STANDARD_GROUPS))
        if group not in known:
            raise UsageError(f"--group {group!r} is not one of {', '.join(known)}")
        pool = [h for h in pool if group in h.groups]
    elif not patterns and default_group is not None:
        pool = [h for h in pool if default_group in h.groups]
    chosen = match_hosts(pool, split_patterns(patterns), what=f"{group} host" if group else "host") \
        if patterns else pool
    if not chosen:
        which = f"group {group or default_group}" if (group or default_group) else "the inventory"
        raise UsageError(f"no host in {which}")
    return chosen


def ansible_limit(hosts: Sequence[Host]) -> str:
    """An Ansible --limit pattern naming exactly `hosts` (pure)."""
    return ",".join(h.name for h in hosts)
