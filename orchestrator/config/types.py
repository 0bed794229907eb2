"""The value types of environment files: durations, sizes, one-line strings, environment values,
service arguments, and the strict base model every section derives from. Pure."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.config.rules import (
    ARG_PLACEHOLDERS,
    control_characters,
    env_value_problem,
)
from orchestrator.ids import shown as _shown

_DURATION_RE = re.compile(r"(?:(\d+)(ms|s|m|h|d|w))+")


_DURATION_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_BRIDGE_NAME_MAX = 15  # IFNAMSIZ - 1


def default_bridge_name(host_prefix: str) -> str:
    """The bridge of a local fleet whose env file names none: `orch-PREFIX`, or a hashed short form.

    Host prefixes are unique per machine (host names are), and so are these names: a prefix
    too long for the 15 characters of an interface name keeps its start and gets 5 hex of
    its sha256 (`or-PREFIX6-xxxxx`).
    """
    name = f"orch-{host_prefix}"
    if len(name) <= _BRIDGE_NAME_MAX:
        return name
    digest = hashlib.sha256(host_prefix.encode()).hexdigest()[:5]
    return f"or-{host_prefix[:6]}-{digest}"


_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _line(value: str) -> str:
    """A string written into a unit, cron line, HAProxy/Prometheus file or HCL: no control characters."""
    bad = control_characters(value)
    if bad:
        raise ValueError(f"{_shown(value)} holds control characters ({', '.join(bad)}); expected one line "
                         "of printable text")
    return value


def _text(value: str) -> str:
    """Free text shown to people (a description): lines and tabs, no other control characters."""
    bad = [c for c in control_characters(value) if c not in ("\\n", "\\t")]
    if bad:
        raise ValueError(f"{_shown(value)} holds control characters ({', '.join(bad)})")
    return value


Line = Annotated[str, AfterValidator(_line)]


Text = Annotated[str, AfterValidator(_text)]


def _env_value(value: str | int | float | bool) -> str | int | float | bool:
    problem = env_value_problem(value)
    if problem:
        raise ValueError(f"the value {problem}")
    return value


EnvValue = Annotated[str | int | float | bool, AfterValidator(_env_value)]


def check_args(argv: Sequence[object]) -> str | None:
    """Why the service arguments `argv` cannot be passed (None: they can), as the role reads them.

    Each argument is a string (or number) without control characters. A placeholder is `{name}`
    with one of ARG_PLACEHOLDERS; `{word}` with any other identifier-like word is an error (a
    typo would reach the service verbatim); every other brace is literal, so `{{ x }}` reaches the
    service byte for byte. (roles/rust_service/module_utils/rust_service_cmdline.py, same rules.)
    """
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        return f"expected a list of strings, got {type(argv).__name__}"
    for index, arg in enumerate(argv):
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            return f"[{index}]: expected a string, got {type(arg).__name__}"
        text = str(arg)
        bad = control_characters(text)
        if bad:
            return f"[{index}]: control characters are not allowed ({', '.join(bad)})"
        unknown = [m.group(1) for m in _PLACEHOLDER_RE.finditer(text) if m.group(1) not in ARG_PLACEHOLDERS]
        if unknown:
            valid = ", ".join("{" + name + "}" for name in ARG_PLACEHOLDERS)
            return f"[{index}]: unknown placeholder {{{unknown[0]}}}; valid: {valid}"
    return None


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration such as `90s`, `5m` or `1h30m`."""
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"{_shown(text)} is not a duration such as 500ms, 30s, 5m, 1h")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART_RE.findall(text))


def _escape(message: str) -> str:
    """Protect literal braces from pydantic's message templating."""
    return message.replace("{", "{{").replace("}", "}}")


def _duration(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PydanticCustomError("duration", "expected a duration such as 500ms, 30s, 5m, 1h")
    text = f"{value}s" if isinstance(value, int) else value.strip()
    if not _DURATION_RE.fullmatch(text):
        raise PydanticCustomError(
            "duration", _escape(f"{_shown(value)} is not a duration such as 500ms, 30s, 5m, 1h"), {"value": value}
        )
    return text


Duration = Annotated[str, BeforeValidator(_duration)]


class _Model(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # pydantic's own extra="forbid" message does not list the valid keys; operators
        # need them, so unknown keys are reported here with the list.
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_key",
                        _escape(f"unknown key {str(key)!r} (valid keys: {', '.join(cls.model_fields)})"),
                        {"key": str(key)},
                    )
        return data


_SIZE_RE = re.compile(r"^(\d+)([KMGT]?)$")


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes in a size such as `512M` or `1G` (binary units, as journalctl's --vacuum-size)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 512M, 1G, 2T")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
