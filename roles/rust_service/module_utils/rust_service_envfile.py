"""The systemd EnvironmentFile the rust_service role writes, and how systemd reads it back (pure).

systemd (252 on the hosts; env-file.c, unchanged since for these cases) reads a double-quoted
value literally except for a backslash before one of `"` `\\` `` ` `` `$`, which it drops; it
expands no variables and no `%` specifiers in an EnvironmentFile. `render` escapes exactly
those four characters, as systemd's own writer does, so that every value reaches the service
byte for byte. A newline, carriage return or NUL cannot be written on one line (systemd's line
and string ends) and is refused, naming the key and never the value.
"""

from __future__ import annotations

import re

#: the escapes systemd honours inside double quotes (SHELL_NEED_ESCAPE)
_ESCAPED = '"\\`$'
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NEWLINE = "\n\r"
_WHITESPACE = " \t\n\r"


class EnvFileError(ValueError):
    """A key or value that cannot be written; the message names the key, never the value."""


def value_text(value):
    """The text of a value: booleans lower-cased (as YAML wrote them), numbers as Python prints them."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def quote(value):
    """The value as a double-quoted EnvironmentFile value that systemd reads back unchanged."""
    text = value_text(value)
    return '"' + "".join("\\" + c if c in _ESCAPED else c for c in text) + '"'


def check(env):
    """Refuse keys that are not variable names and values systemd cannot read back."""
    for key, value in env.items():
        if not isinstance(key, str) or not _NAME.match(key):
            raise EnvFileError(f"environment key {key!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if value is None or isinstance(value, (dict, list)):
            raise EnvFileError(f"environment key {key}: expected a string, number or boolean")
        text = value_text(value)
        if any(c in text for c in "\n\r\0"):
            raise EnvFileError(f"environment key {key}: the value holds a newline, carriage return or NUL, "
                               "which an EnvironmentFile cannot carry")


def render(env, header):
    """The file's content: `header`, then sorted KEY="value" lines."""
    check(env)
    lines = [header] if header else []
    lines += [f"{key}={quote(value)}" for key, value in sorted(env.items())]
    return "".join(line + "\n" for line in lines)


def parse(text):
    """The variables systemd's parse_env_file_internal() reads from `text` (a port of its states).

    Used to name the keys a new file changes and to give the release hooks the service's
    environment.
    """
    env = {}
    state = "pre_key"
    key, value = [], []
    key_ws = value_ws = None  # where trailing whitespace of the key / an unquoted value starts

    def push():
        name = key[:key_ws] if key_ws is not None else key
        kept = value[:value_ws] if state == "value" and value_ws is not None else value
        env["".join(name)] = "".join(kept)

    for c in text:
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif c not in _WHITESPACE:
                state, key, key_ws = "key", [c], None
        elif state == "key":
            if c in _NEWLINE:
                state = "pre_key"
            elif c == "=":
                state, value, value_ws = "pre_value", [], None
            else:
                if c not in _WHITESPACE:
                    key_ws = None
                elif key_ws is None:
                    key_ws = len(key)
                key.append(c)
        elif state in ("pre_value", "value") and c in _NEWLINE:
            push()
            state = "pre_key"
        elif state == "pre_value":
            if c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in _WHITESPACE:
                state = "value"
                value.append(c)
        elif state == "value":
            if c == "\\":
                state, value_ws = "value_escape", None
            else:
                if c not in _WHITESPACE:
                    value_ws = None
                elif value_ws is None:
                    value_ws = len(value)
                value.append(c)
        elif state == "value_escape":
            state = "value"
            if c not in _NEWLINE:
                value.append(c)
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value.append(c)
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value.append(c)
        elif state == "double_escape":
            state = "double"
            if c in _ESCAPED:
                value.append(c)
            elif c != "\n":
                value.extend(("\\", c))
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in _NEWLINE:
                state = "pre_key"
        else:  # comment_escape (systemd 252: the comment goes on, whatever follows)
            state = "comment"
    if state in ("pre_value", "value", "value_escape", "single", "double", "double_escape"):
        push()
    return env


def keys_changed(old_text, new_env):
    """Sorted names of the variables added, removed or changed between a file and `new_env`."""
    old = parse(old_text) if old_text is not None else {}
    new = {key: value_text(value) for key, value in new_env.items()}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
