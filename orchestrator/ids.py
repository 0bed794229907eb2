"""The formats of the ids the tool hands around: release ids, release versions and run ids.

An id becomes a host path (`releases/<id>`), a controller path (`.orchestrate/ENV/artifacts/<id>`)
and an Ansible variable, and ids come back from places the tool does not control: the command
line, what a host reports (the basename of its `current` link), files under `.orchestrate/`.
So each is checked against the whole string (`re.fullmatch`; a `$` would let a trailing newline
through) wherever it comes in.
"""

from __future__ import annotations

import re

from orchestrator.errors import UsageError

#: a release version (Cargo.toml's `version`, SemVer in practice): what may prefix a release id
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")

#: `<version>-<first 12 hex of the binary's sha256>` (orchestrator.release.artifact.release_id)
RELEASE_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}-[0-9a-f]{12}")

#: a run of the journal, as orchestrator.runs.identity.new_run_id makes them: `20261123T181500-abcd`
RUN_ID_RE = re.compile(r"\d{8}T\d{6}-[0-9a-f]{4}")


def is_release_id(value: object) -> bool:
    """Whether `value` is a release id such as 0.2.0-0123456789ab (the whole string)."""
    return isinstance(value, str) and RELEASE_ID_RE.fullmatch(value) is not None


def is_version(value: object) -> bool:
    """Whether `value` can be the version part of a release id."""
    return isinstance(value, str) and VERSION_RE.fullmatch(value) is not None


def is_run_id(value: object) -> bool:
    """Whether `value` is a run id of the journal such as 20261123T181500-abcd."""
    return isinstance(value, str) and RUN_ID_RE.fullmatch(value) is not None


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: for messages about values from outside, which may be
    megabytes long or hold control characters (repr escapes them)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def require_release_id(value: str, where: str) -> str:
    """`value` when it is a release id, else a UsageError (exit 2) naming `where` (e.g. `--to`)."""
    if not is_release_id(value):
        raise UsageError(f"{where} {shown(value)} is not a release id such as 0.2.0-0123456789ab")
    return value


def require_run_id(value: str, where: str) -> str:
    """`value` when it is a run id, else a UsageError (exit 2) naming `where` (e.g. `RUN_ID`)."""
    if not is_run_id(value):
        raise UsageError(f"{where} {shown(value)} is not a run id such as 20261123T181500-abcd",
                         hint="`orchestrate runs ENV` lists the runs of an environment")
    return value
