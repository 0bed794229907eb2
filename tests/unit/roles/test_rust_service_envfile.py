"""roles/rust_service/module_utils/rust_service_envfile.py: EnvironmentFile quoting and reading.

`parse` is a port of systemd's parse_env_file_internal() (env-file.c) states; the round trip
checks that what `render` writes reads back as the exact values. The molecule scenario checks
the same sample in /proc/PID/environ of a real service.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.roles.helpers import load_module_utils

HOSTILE = {
    "SECRET": "Xy{#9k#}Q2{{ x }}$HOME",
    "QUOTES": "say \"hi\" and 'bye'",
    "BACKSLASH": "C:\\path\\ \\n \\\\",
    "PERCENT": "100% %n %%",
    "DOLLAR": "$VAR ${VAR} $$ `id`",
    "SPACES": "  leading and trailing  ",
    "UNICODE": "ü ✓ 𝄞 \u00a0",
    "HASH": "#not-a-comment ;neither",
    "TAB": "a\tb",
    "EMPTY": "",
}


@pytest.fixture(scope="module")
def envfile() -> ModuleType:
    return load_module_utils()["rust_service_envfile"]


def test_renders_what_the_env_template_rendered(envfile: ModuleType) -> None:
    # the exact bytes the former env.j2 template produced for the same input, so hosts deployed
    # before see no change and no restart
    env = {"HELLO_GREETING": 'hi "there" \\ x', "B": True, "F": 1.5, "I": 3, "S": "sec"}
    expected = '#\n# Ansible managed\n#\nB="true"\nF="1.5"\nHELLO_GREETING="hi \\"there\\" \\\\ x"\nI="3"\nS="sec"\n'
    assert envfile.render(env, "#\n# Ansible managed\n#") == expected
    assert envfile.render({}, "") == ""


def test_the_hostile_sample_reads_back_exactly(envfile: ModuleType) -> None:
    text = envfile.render(HOSTILE, "# managed")
    assert envfile.parse(text) == HOSTILE
    # $ and ` are escaped as systemd's own writer does (the file is shell-safe too)
    assert 'SECRET="Xy{#9k#}Q2{{ x }}\\$HOME"\n' in text
    assert 'DOLLAR="\\$VAR \\${VAR} \\$\\$ \\`id\\`"\n' in text


values = st.text(alphabet=st.characters(exclude_characters="\n\r\x00", exclude_categories=("Cs",)), max_size=40)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


@given(st.dictionaries(names, values | st.booleans() | st.integers(), max_size=8))
def test_every_value_reads_back_exactly(envfile: ModuleType, env: dict[str, object]) -> None:
    parsed = envfile.parse(envfile.render(env, "#\n# Ansible managed\n#"))
    assert parsed == {k: envfile.value_text(v) for k, v in env.items()}


@pytest.mark.parametrize("bad", ["line\nbreak", "carriage\rreturn", "nul\x00byte"])
def test_values_systemd_cannot_carry_are_refused_naming_the_key_only(envfile: ModuleType, bad: str) -> None:
    with pytest.raises(envfile.EnvFileError) as caught:
        envfile.render({"GOOD": "x", "DB_PASSWORD": "hunter2" + bad}, "")
    assert "DB_PASSWORD" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "A=B", "ü"])
def test_keys_must_be_variable_names(envfile: ModuleType, key: str) -> None:
    with pytest.raises(envfile.EnvFileError, match="not a variable name"):
        envfile.render({key: "v"}, "")


def test_parse_follows_systemd_for_what_others_write(envfile: ModuleType) -> None:
    text = ("# comment\n; also\nA = b c  \nB='x \\ y'\nC=\"e\\f \\\" \\$\"\nD=e\\ f\n"
            "# ends with a backslash\\\nHIDDEN=1\nE=\n")
    assert envfile.parse(text) == {"A": "b c", "B": "x \\ y", "C": 'e\\f " $', "D": "e f", "E": ""}


def test_keys_changed_names_only_what_differs(envfile: ModuleType) -> None:
    old = envfile.render({"A": "1", "B": "secret-b", "C": True}, "# h")
    assert envfile.keys_changed(old, {"A": 1, "B": "secret-b", "C": True}) == []
    assert envfile.keys_changed(old, {"A": "2", "C": "true", "D": "new"}) == ["A", "B", "D"]
    assert envfile.keys_changed(None, {"A": "1"}) == ["A"]
