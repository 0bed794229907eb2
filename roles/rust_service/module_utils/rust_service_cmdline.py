"""Placeholders and systemd command-line quoting of the rust_service role (pure functions).

Shared by the role's filter plugin (the unit's ExecStart) and the rust_release module (the
release hooks), so that an argument means the same in both places.

Arguments arrive as untrusted data. They are never templated: the only expansion is the fixed
set of placeholders below. A placeholder is `{name}` with one of those names; `{word}` with any
other identifier-like word is refused (a typo such as `{prot}` would otherwise reach the service
as those characters); every other brace is literal, so `{{ x }}`, `{}` or `${1:-x}` reach the
service byte for byte. (The controller checks the same rules: orchestrator.config.schema.check_args.)
"""

from __future__ import annotations

import re
import unicodedata

#: placeholders an argument may use; the caller supplies their values
PLACEHOLDERS = ("config_dir", "data_dir", "name", "port", "release_dir")

#: characters a word of ExecStart may hold without quotes (anything else is double-quoted)
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@+=:,./-")


class CommandLineError(ValueError):
    """An argument that cannot be expanded or passed to systemd; the message names it."""


def control_characters(text):
    """The control characters (Unicode category Cc: C0, DEL, C1) in `text`, as escapes."""
    return sorted({repr(c)[1:-1] for c in text if unicodedata.category(c) == "Cc"})


#: `{word}`: a placeholder when the word is one of PLACEHOLDERS, an error for any other word
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(template, values, where):
    """`template` with each `{name}` of `values` replaced by its value, in one pass.

    `{word}` with an identifier-like word that is not a placeholder raises CommandLineError
    naming `where`; every other brace stays as it is. Values are inserted as they are and never
    expanded again.
    """
    def replace(match):
        name = match.group(1)
        if name not in values:
            valid = ", ".join("{" + key + "}" for key in sorted(values))
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise CommandLineError(f"{where}: unknown placeholder {{{shown}}}; valid: {valid} "
                                   "(any other brace is literal)")
        return str(values[name])

    return _PLACEHOLDER.sub(replace, template)


def expand_argv(argv, values, where):
    """Expand every argument of `argv` (a list of strings or numbers); refuse control characters.

    `where` names the list in messages (e.g. "rust_service_args"); an argument is named by its index.
    """
    if not isinstance(argv, (list, tuple)):
        raise CommandLineError(f"{where}: expected a list of strings, got {type(argv).__name__}")
    expanded = []
    for index, arg in enumerate(argv):
        label = f"{where}[{index}]"
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            raise CommandLineError(f"{label}: expected a string, got {type(arg).__name__}")
        result = expand(str(arg), values, label)
        bad = control_characters(result)
        if bad:
            raise CommandLineError(f"{label}: control characters are not allowed ({', '.join(bad)})")
        expanded.append(result)
    return expanded


def systemd_word(word):
    """`word` quoted for a systemd command line (systemd.service(5) "Command lines").

    systemd unquotes a line's words (C escapes inside double quotes), then expands `%`
    specifiers in each word, then environment variables (`$$` is a literal `$`). So inside
    double quotes `\\` and `"` get a backslash, `%` becomes `%%` and `$` becomes `$$`. A word
    of plain characters stays bare (a lone `;` is not one: quoted, it is an argument, not a
    command separator). Control characters cannot be expressed and raise CommandLineError.
    """
    bad = control_characters(word)
    if bad:
        raise CommandLineError(f"control characters are not allowed in a command line ({', '.join(bad)})")
    if word and all(c in _BARE for c in word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return '"' + escaped + '"'


def check_executable(path):
    """Refuse an ExecStart executable that cannot be written verbatim.

    systemd expands specifiers but no variables in the executable and refuses quotes and
    backslashes in it, so only plain characters are accepted, unquoted. Whether the path is
    one systemd runs (absolute, not a directory) is left to systemd itself: the role's
    `systemd-analyze verify` names the problem.
    """
    if not path or not all(c in _BARE for c in path):
        raise CommandLineError(f"executable {path!r}: expected a path of letters, digits and _@+=:,./- "
                               "(no spaces, quotes, '%' or '$')")


def exec_command_line(executable, argv):
    """The value of ExecStart= running `executable` with the arguments `argv`, each exactly."""
    check_executable(executable)
    words = [executable]
    for index, arg in enumerate(argv):
        try:
            words.append(systemd_word(arg))
        except CommandLineError as exc:
            raise CommandLineError(f"argument {index}: {exc}") from None
    return " ".join(words)


def check_file_name(name, what):
    """Refuse a file name that is not one plain path component (the service's binary)."""
    if not name or name in (".", "..") or not all(c in _BARE for c in name) or "/" in name:
        raise CommandLineError(f"{what} {name!r}: expected a file name of letters, digits and _@+=:,.- "
                               "(no '/', spaces or quotes)")
