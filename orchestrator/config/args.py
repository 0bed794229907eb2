"""The service's command line and hooks as the environment file gives them: pure checks.

`service.args` and `service.hooks.*` are argv lists that reach the unit (ExecStart) and the
hooks as data, never as templates. A placeholder is `{name}` with one of ARG_PLACEHOLDERS; a
`{word}` with any other identifier-like word is an error (a typo such as `{prot}` would reach the
service as those characters); every other brace is literal, so `{{ x }}` reaches the service byte
for byte. The rust_service role applies the same rules
(roles/rust_service/module_utils/rust_service_cmdline.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

#: placeholders an argument may use (the role fills them in on each host)
ARG_PLACEHOLDERS = ("port", "data_dir", "config_dir", "release_dir", "name")


#: the service's command line when the environment file gives none (hello-service's flags)
DEFAULT_ARGS = ("--port", "{port}", "--data-dir", "{data_dir}")


_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _control_characters(text: str) -> list[str]:
    """The control characters (Unicode category Cc) in `text`, as escapes."""
    return sorted({repr(c)[1:-1] for c in text if unicodedata.category(c) == "Cc"})


def check_args(argv: Sequence[object]) -> str | None:
    """Why the argument list `argv` cannot be passed (None: it can), as the role reads it.

    Each argument is a string (or a number) without control characters whose `{word}`s are all
    placeholders. The message names the argument by its index (`[2]: ...`).
    """
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        return f"expected a list of strings, got {type(argv).__name__}"
    for index, arg in enumerate(argv):
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            return f"[{index}]: expected a string, got {type(arg).__name__}"
        text = str(arg)
        bad = _control_characters(text)
        if bad:
            return f"[{index}]: control characters are not allowed ({', '.join(bad)})"
        unknown = [m.group(1) for m in _PLACEHOLDER_RE.finditer(text) if m.group(1) not in ARG_PLACEHOLDERS]
        if unknown:
            valid = ", ".join("{" + name + "}" for name in ARG_PLACEHOLDERS)
            return f"[{index}]: unknown placeholder {{{unknown[0]}}}; valid: {valid}"
    return None
