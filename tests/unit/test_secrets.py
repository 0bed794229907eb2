"""orchestrator.config.secrets: vault round trip, password sources, validation, the vars file."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import secrets as sec
from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.errors import ConfigError, ExitStatus, UsageError

DEV_PASSWORD_FILE = Path("inventories/dev/.vault-password-dev")


@pytest.fixture
def loaded(project_copy: Path) -> LoadedEnvironment:
    return Project(project_copy).load("dev")


def write_vault(loaded: LoadedEnvironment, plaintext: str, password: str) -> Path:
    path = sec.secrets_path(loaded)
    path.write_text(sec.encrypt_text(plaintext, password))
    return path


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "vault-pass"
    path.write_text(password + "\n")
    return path


def test_round_trip_with_a_password_file(loaded: LoadedEnvironment, tmp_path: Path) -> None:
    path = write_vault(loaded, "HELLO_SECRET: s3cret value\nAPI_TOKEN: 12345\n", "pw-1")
    assert path.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    assert "s3cret" not in path.read_text()
    env = {sec.PASSWORD_FILE_ENV: str(password_file(tmp_path, "pw-1"))}
    assert sec.load_secrets(loaded, environ=env) == {"HELLO_SECRET": "s3cret value", "API_TOKEN": "12345"}


def test_shipped_dev_secrets_open_with_the_public_dev_password(loaded: LoadedEnvironment) -> None:
    env = {sec.PASSWORD_FILE_ENV: str(loaded.project_dir / DEV_PASSWORD_FILE)}
    secrets = sec.load_secrets(loaded, environ=env)
    assert secrets["HELLO_SECRET"]
    assert set(secrets) == {"HELLO_SECRET"}


def test_no_password_source_is_exit_2_naming_the_variable(loaded: LoadedEnvironment) -> None:
    with pytest.raises(UsageError) as info:
        sec.load_secrets(loaded, None, environ={})
    assert info.value.exit_status == ExitStatus.BAD_INPUT
    assert "ORCHESTRATE_VAULT_PASSWORD_FILE" in info.value.message
    assert "inventories/dev/secrets.yml" in info.value.message


def test_the_prompt_is_asked_only_without_a_password_file(loaded: LoadedEnvironment, tmp_path: Path) -> None:
    write_vault(loaded, "A: b\n", "prompted")
    asked: list[bool] = []

    def prompt() -> str:
        asked.append(True)
        return "prompted"

    assert sec.load_secrets(loaded, prompt, environ={}) == {"A": "b"}
    assert asked == [True]
    env = {sec.PASSWORD_FILE_ENV: str(password_file(tmp_path, "prompted"))}
    assert sec.load_secrets(loaded, prompt, environ=env) == {"A": "b"}
    assert asked == [True]


def test_wrong_password_is_a_usage_error(loaded: LoadedEnvironment, tmp_path: Path) -> None:
    write_vault(loaded, "A: b\n", "right")
    env = {sec.PASSWORD_FILE_ENV: str(password_file(tmp_path, "wrong"))}
    with pytest.raises(UsageError, match="wrong vault password"):
        sec.load_secrets(loaded, environ=env)


def test_unreadable_password_file_is_named(loaded: LoadedEnvironment, tmp_path: Path) -> None:
    env = {sec.PASSWORD_FILE_ENV: str(tmp_path / "absent")}
    with pytest.raises(UsageError, match=r"ORCHESTRATE_VAULT_PASSWORD_FILE=.*absent: cannot read"):
        sec.load_secrets(loaded, environ=env)


def test_environment_without_secrets_needs_no_password(loaded: LoadedEnvironment) -> None:
    sec.secrets_path(loaded).unlink()
    assert sec.load_secrets(loaded, None, environ={}) == {}


def test_clear_text_secrets_are_refused(loaded: LoadedEnvironment) -> None:
    sec.secrets_path(loaded).write_text("HELLO_SECRET: plain\n")
    with pytest.raises(ConfigError, match="not vault-encrypted"):
        sec.load_secrets(loaded, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lower: x\n", "'lower' is not an environment variable name"),
        ("A:\n  nested: 1\n", "A: expected a string value, got dict"),
        ("A: true\n", "A: expected a string value, got bool"),
        ("- a\n", "expected a mapping of NAME: value, got list"),
        ('A: "two\\nlines"\n', "secrets.yml:1: A: the value holds \\n, which an EnvironmentFile cannot carry"),
        ('A: ok\nB: "two\\0nul"\n', "secrets.yml:2: B: the value holds \\x00"),
        ('A: ok\n\nC: "two\\rcr"\n', "secrets.yml:3: C: the value holds \\r"),
        ("A: ok\nB: two" + "x" * 70000 + "\n", "secrets.yml:2: B: the value is 70003 bytes long"),
        ("A: ok\n\nlower: x\n", "secrets.yml:3: 'lower' is not an environment variable name"),
        ("A: ok\nB: two\x01\n", "secrets.yml:2: a character YAML does not allow"),
    ],
)
def test_invalid_secrets_are_named_without_their_values(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        sec.parse_secrets(text, "inventories/dev/secrets.yml")
    assert expected in info.value.message
    assert "two" not in info.value.message and "nested" not in info.value.message


def test_secret_vars_is_the_rust_service_variable() -> None:
    assert sec.secret_vars({"HELLO_SECRET": "v"}) == {"rust_service_secret_env": {"HELLO_SECRET": "v"}}
    assert sec.secret_vars({}) == {}
