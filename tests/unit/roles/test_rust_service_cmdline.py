"""roles/rust_service/module_utils/rust_service_cmdline.py: placeholders and systemd quoting.

The round trip runs the rendered ExecStart value through a model of how systemd 252 reads a
command line (load-fragment.c config_parse_exec: words split and unquoted with C escapes, `%`
specifiers resolved per word, then `$` variables at exec time), written here from those rules
and not from the code under test; a sample of hostile arguments also goes through the real
`systemd-analyze verify`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.roles.helpers import load_module_utils

VALUES = {"port": 8080, "data_dir": "/var/lib/hello", "config_dir": "/etc/hello", "release_dir": "/opt/hello/current",
          "name": "hello"}

HOSTILE = [
    "plain", "with space", "", " ", ";", "\\;", "a;b", "\"", "'", "\\", "\\\\", "ends with backslash\\",
    "$HOME", "${HOME}", "$$", "$", "%", "%%", "%n", "%i%", "`id`", "#not a comment", "é ü ✓ 𝄞", "-dash",
    "@at", "!bang", "+plus", ":colon", "{ x }", "a\u00a0b", "\"quoted\" 'single' \\back $var %spec ;",
]


@pytest.fixture(scope="module")
def cmd() -> ModuleType:
    return load_module_utils()["rust_service_cmdline"]


# --- a model of systemd's command-line parsing ----------------------------------------------------

WHITESPACE = " \t\n\r"
C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
             '"': '"', "'": "'", "s": " "}


class Unparsable(ValueError):
    """Something the model of systemd would warn about, expand or split: never rendered."""


def _extract_word(line: str, i: int) -> tuple[str, int]:
    """extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE) from offset i (at a non-blank)."""
    out = []
    quote = ""
    while i < len(line):
        c = line[i]
        if c == "\\":
            if i + 1 >= len(line) or line[i + 1] not in C_ESCAPES:
                raise Unparsable(f"escape {line[i:i + 2]!r} (only the simple C escapes are modelled)")
            out.append(C_ESCAPES[line[i + 1]])
            i += 2
        elif quote:
            if c == quote:
                quote = ""
            else:
                out.append(c)
            i += 1
        elif c in "\"'":
            quote = c
            i += 1
        elif c in WHITESPACE:
            break
        else:
            out.append(c)
            i += 1
    if quote:
        raise Unparsable("unbalanced quotes")
    return "".join(out), i


def _specifiers(word: str) -> str:
    out = []
    i = 0
    while i < len(word):
        if word[i] == "%":
            if word[i + 1:i + 2] != "%":
                raise Unparsable(f"specifier {word[i:i + 2]!r} would be expanded")
            out.append("%")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def _variables(word: str) -> str:
    if word.startswith("$") and word[1:2] not in ("{", "$"):
        raise Unparsable(f"{word!r} would be replaced by a variable split at whitespace")
    out = []
    i = 0
    while i < len(word):
        if word[i] == "$":
            if word[i + 1:i + 2] != "$":
                raise Unparsable(f"{word[i:i + 2]!r} would be expanded")
            out.append("$")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def systemd_argv(value: str) -> list[str]:
    """The argv systemd runs for `ExecStart=<value>` (one command; the executable first)."""
    words = []
    i = 0
    value = value.strip(WHITESPACE)
    while True:
        while i < len(value) and value[i] in WHITESPACE:
            i += 1
        if i >= len(value):
            break
        rest = value[i:]
        if rest[0] == ";" and (len(rest) == 1 or rest[1] in WHITESPACE):
            raise Unparsable("an unquoted ';' separates commands")
        if rest.startswith("\\;") and (len(rest) == 2 or rest[2] in WHITESPACE):
            words.append(";")
            i += 2
            continue
        word, i = _extract_word(value, i)
        words.append(_specifiers(word))
    if not words or not words[0].startswith("/"):
        raise Unparsable("the executable must be an absolute path")
    return [words[0]] + [_variables(w) for w in words[1:]]


# --- the tests --------------------------------------------------------------------------------------

argument = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), max_size=30)


@given(st.lists(argument, max_size=8))
def test_every_argument_reaches_the_process_exactly(cmd: ModuleType, argv: list[str]) -> None:
    line = cmd.exec_command_line("/opt/hello/current/hello-server", argv)
    assert systemd_argv(line) == ["/opt/hello/current/hello-server", *argv]


@pytest.mark.parametrize("arg", HOSTILE)
def test_hostile_arguments_round_trip(cmd: ModuleType, arg: str) -> None:
    line = cmd.exec_command_line("/opt/x/current/x", ["--flag", arg, "tail"])
    assert systemd_argv(line) == ["/opt/x/current/x", "--flag", arg, "tail"]


def test_plain_words_stay_bare_and_the_default_line_is_unchanged(cmd: ModuleType) -> None:
    argv = cmd.expand_argv(["--port", "{port}", "--data-dir", "{data_dir}"], VALUES, "args")
    # the line the unit had before arguments were configurable: no restart on upgrade
    assert cmd.exec_command_line("/opt/hello/current/hello", argv) == \
        "/opt/hello/current/hello --port 8080 --data-dir /var/lib/hello"
    assert cmd.systemd_word(";") == '";"'
    assert cmd.systemd_word("") == '""'
    assert cmd.systemd_word("100%") == '"100%%"'
    assert cmd.systemd_word("$HOME") == '"$$HOME"'
    assert cmd.systemd_word('a"b\\c') == '"a\\"b\\\\c"'


@pytest.mark.parametrize("bad", ["a\nb", "a\x00b", "tab\there", "\x7f", "\x85", "cr\r"])
def test_control_characters_are_refused(cmd: ModuleType, bad: str) -> None:
    with pytest.raises(cmd.CommandLineError, match="control characters"):
        cmd.expand_argv(["ok", bad], VALUES, "rust_service_args")
    with pytest.raises(cmd.CommandLineError, match="control characters"):
        cmd.systemd_word(bad)


@pytest.mark.parametrize(("template", "expected"), [
    ("{port}", "8080"),
    ("--data-dir={data_dir}/x", "--data-dir=/var/lib/hello/x"),
    ("{release_dir}/static:{config_dir}:{name}", "/opt/hello/current/static:/etc/hello:hello"),
    # every brace that is not part of a {placeholder} is literal, byte for byte
    ("{{ x }}", "{{ x }}"),
    ("{{port}}", "{8080}"),
    ("{{{port}}}", "{{8080}}"),
    ("json={\"a\": 1}", 'json={"a": 1}'),
    ("{}", "{}"),
    ("{0}", "{0}"),
    ("{port:>5}", "{port:>5}"),
    ("{ port }", "{ port }"),
    ("${1:-x}", "${1:-x}"),
    ("{port", "{port"),
    ("port}", "port}"),
    ("}{", "}{"),
    ("{% if x %}{# c #}", "{% if x %}{# c #}"),
    ("no braces $HOME %n", "no braces $HOME %n"),
])
def test_placeholders_expand_once_and_other_braces_are_literal(cmd: ModuleType, template: str,
                                                               expected: str) -> None:
    assert cmd.expand(template, VALUES, "arg") == expected


def test_a_value_is_never_expanded_again(cmd: ModuleType) -> None:
    assert cmd.expand("{data_dir}", {**VALUES, "data_dir": "/d/{port}"}, "arg") == "/d/{port}"


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40))
def test_text_without_a_word_in_braces_reaches_the_service_unchanged(cmd: ModuleType, text: str) -> None:
    if re.search(r"\{[A-Za-z_][A-Za-z0-9_]*\}", text):
        return
    assert cmd.expand(text, VALUES, "arg") == text


@pytest.mark.parametrize(("template", "message"), [
    ("{prot}", r"rust_service_args\[1\]: unknown placeholder \{prot\}; valid: \{config_dir\}, \{data_dir\}"),
    ("${HOME}", r"unknown placeholder \{HOME\}"),
    ("{{x}}", r"unknown placeholder \{x\}"),
    ("a{Port}b", r"unknown placeholder \{Port\}"),
    ("{_}", r"unknown placeholder \{_\}"),
])
def test_an_unknown_word_in_braces_is_refused_naming_the_argument(cmd: ModuleType, template: str,
                                                                 message: str) -> None:
    with pytest.raises(cmd.CommandLineError, match=message):
        cmd.expand_argv(["ok", template], VALUES, "rust_service_args")


def test_the_role_and_the_controller_know_the_same_placeholders(cmd: ModuleType) -> None:
    from orchestrator.config.schema import ARG_PLACEHOLDERS
    from orchestrator.config.types import check_args

    assert tuple(sorted(cmd.PLACEHOLDERS)) == tuple(sorted(ARG_PLACEHOLDERS))
    for template in ("{prot}", "{{x}}", "{port}", "{{ x }}", "${1:-x}", "a\nb"):
        try:
            cmd.expand_argv([template], VALUES, "args")
            role_refuses = False
        except cmd.CommandLineError:
            role_refuses = True
        assert (check_args([template]) is not None) == role_refuses, template


def test_arguments_must_be_strings_or_numbers(cmd: ModuleType) -> None:
    assert cmd.expand_argv(["--workers", 4, 1.5], VALUES, "a") == ["--workers", "4", "1.5"]
    for bad in (True, None, ["x"], {"a": 1}):
        with pytest.raises(cmd.CommandLineError, match=r"a\[0\]: expected a string"):
            cmd.expand_argv([bad], VALUES, "a")
    with pytest.raises(cmd.CommandLineError, match="expected a list"):
        cmd.expand_argv("--port 80", VALUES, "a")


@pytest.mark.parametrize("path", ["", "/opt/with space/x", "/opt/%n/x", "/opt/$x/x", "/opt/q\"/x", "/opt/b\\/x"])
def test_executables_that_cannot_be_written_verbatim_are_refused(cmd: ModuleType, path: str) -> None:
    with pytest.raises(cmd.CommandLineError, match="executable"):
        cmd.exec_command_line(path, [])


def test_a_relative_executable_is_left_for_systemd_to_refuse(cmd: ModuleType) -> None:
    # the role's systemd-analyze verify names what is wrong with it
    assert cmd.exec_command_line("opt/x/current/x", ["a b"]) == 'opt/x/current/x "a b"'


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "with space", "q'", "x\n"])
def test_binary_names_are_plain_file_names(cmd: ModuleType, name: str) -> None:
    with pytest.raises(cmd.CommandLineError, match="rust_service_binary"):
        cmd.check_file_name(name, "rust_service_binary")
    cmd.check_file_name("hello-server_2.0", "rust_service_binary")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_quoted_hostile_sample(cmd: ModuleType, tmp_path: Path) -> None:
    # systemd-analyze warns about unknown escapes and unbalanced quotes; the only complaint
    # allowed is the executable that does not exist on this machine
    unit = tmp_path / "probe.service"
    unit.write_text("[Service]\nType=simple\nExecStart="
                    + cmd.exec_command_line("/opt/probe/current/probe", HOSTILE) + "\n")
    proc = subprocess.run(["systemd-analyze", "verify", f"{unit}:probe.service"], capture_output=True, text=True,
                          timeout=60, check=False)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if line.strip() and "is not executable" not in line]
    assert complaints == []
