"""Secrets of an environment: `inventories/<env>/secrets.yml`, encrypted with ansible-vault.

The file is a flat mapping of environment variable names to values. The vault password comes
from the file named by ORCHESTRATE_VAULT_PASSWORD_FILE, or from a caller-supplied callable (the
CLI prompts when it has a terminal); with neither, loading is a UsageError (exit 2) that names
the variable. Secrets reach a service only through its EnvironmentFile: callers hand them to
Ansible as `PlaybookRun(secret_vars=secret_vars(...))` (tools/ansible.py), which passes them in a
mode-0600 vars file outside the project that is deleted after the run, so that nothing under
`.orchestrate/` (ansible-runner's env/extravars, its command record, the journal) holds a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import vault
from orchestrator.config.loader import LoadedEnvironment, decode_utf8
from orchestrator.config.rules import env_value_problem
from orchestrator.errors import ConfigError, UsageError
from orchestrator.ids import shown

#: environment variable naming the file that holds the vault password
PASSWORD_FILE_ENV = "ORCHESTRATE_VAULT_PASSWORD_FILE"  # noqa: S105 - a variable name, not a password
SECRETS_FILE = "secrets.yml"
#: the var under which playbooks receive the secrets (rust_service merges it into the EnvironmentFile)
SECRETS_VAR = "rust_service_secret_env"

_ENV_VAR_RE = re.compile(r"[A-Z_][A-Z0-9_]*")

PasswordProvider = Callable[[], str]


def secrets_path(loaded: LoadedEnvironment) -> Path:
    """`inventories/<env>/secrets.yml` of the environment (it may not exist)."""
    return loaded.path.parent / SECRETS_FILE


def _display(path: Path, project_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_dir.resolve()))
    except ValueError:
        return str(path)


def read_password_file(path: Path) -> str:
    """The password in `path` (first line, trailing newline stripped); UsageError when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"{PASSWORD_FILE_ENV}={path}: cannot read the vault password file: {exc.strerror or exc}"
        ) from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise UsageError(f"{PASSWORD_FILE_ENV}={path}: the vault password file is empty")
    return password


def resolve_password(
    display: str,
    password_provider: PasswordProvider | None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The vault password for the secrets file shown as `display`.

    Order: the file named by ORCHESTRATE_VAULT_PASSWORD_FILE, then `password_provider` (a
    prompt); with neither, a UsageError naming the variable.
    """
    environ = os.environ if environ is None else environ
    file_name = environ.get(PASSWORD_FILE_ENV, "")
    if file_name:
        return read_password_file(Path(file_name))
    if password_provider is not None:
        password = password_provider()
        if not password:
            raise UsageError(f"{display}: an empty vault password was given")
        return password
    raise UsageError(
        f"{display} is vault-encrypted and no password is available: set {PASSWORD_FILE_ENV} "
        "to a file holding the vault password (or run interactively to be prompted)"
    )


def encrypt_text(plaintext: str, password: str) -> str:
    """An ansible-vault (1.1, AES256) payload of `plaintext`, as `ansible-vault encrypt` writes it."""
    payload: bytes = vault.ansible_vault(password.encode("utf-8")).encrypt(plaintext.encode("utf-8"))
    return payload.decode("ascii")


def _key_lines(text: str) -> dict[object, int]:
    """Line of each top-level key of the YAML mapping in `text` (already known to parse)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    loader = yaml.SafeLoader("")
    lines: dict[object, int] = {}
    for key_node, _ in node.value:
        try:
            key = loader.construct_object(key_node, deep=True)
        except yaml.YAMLError:
            continue
        if isinstance(key, (str, int, float, bool)) or key is None:
            lines[key] = key_node.start_mark.line + 1
    return lines


def parse_secrets(text: str, display: str) -> dict[str, str]:
    """Validate decrypted secrets: a flat mapping of environment variable names to scalars.

    Errors name the file, the line and the key, never a value.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            "YAML syntax error in the decrypted secrets", path=display,
            line=mark.line + 1 if mark is not None else None,
        ) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError("a character YAML does not allow in the decrypted secrets (write it as an escape in a "
                          "double-quoted string)", path=display,
                          line=text.count("\n", 0, max(exc.position, 0)) + 1) from None
    except yaml.YAMLError:
        raise ConfigError("YAML error in the decrypted secrets", path=display) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of NAME: value, got {type(data).__name__}", path=display, line=1)
    lines = _key_lines(text)
    secrets: dict[str, str] = {}
    for key, value in data.items():
        # Values are never echoed in errors: the message names the key only.
        line = lines.get(key, 1)
        if not isinstance(key, str) or not _ENV_VAR_RE.fullmatch(key):
            raise ConfigError(f"{shown(key)} is not an environment variable name (A-Z, 0-9, _)",
                              path=display, line=line)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"expected a string value, got {type(value).__name__}", path=display, line=line,
                              field=key)
        text_value = str(value)
        problem = env_value_problem(text_value)
        if problem:
            raise ConfigError(f"the value {problem}", path=display, line=line, field=key)
        secrets[key] = text_value
    return secrets


def load_secrets(
    loaded: LoadedEnvironment,
    password_provider: PasswordProvider | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Decrypted secrets of the environment ({} when it has no secrets.yml).

    `password_provider` is asked only when ORCHESTRATE_VAULT_PASSWORD_FILE is not set; without
    either, a UsageError (exit 2) names the variable. A wrong password is a UsageError too.
    """
    path = secrets_path(loaded)
    if not path.exists():
        return {}
    display = _display(path, loaded.project_dir)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=display) from None
    if not vault.is_vault(raw):
        raise ConfigError(
            "is not vault-encrypted; encrypt it with `ansible-vault encrypt` (secrets are never stored in clear)",
            path=display,
        )
    password = resolve_password(display, password_provider, environ)
    try:
        plaintext = vault.read(raw, password.encode("utf-8"))
    except vault.VaultError:
        from_file = (os.environ if environ is None else environ).get(PASSWORD_FILE_ENV)
        source = f"the file named by {PASSWORD_FILE_ENV}" if from_file else "the password given"
        raise UsageError(f"{display}: cannot decrypt with {source} (wrong vault password?)") from None
    return parse_secrets(decode_utf8(plaintext, display, what="the decrypted secrets are "), display)


def secret_vars(secrets: Mapping[str, str]) -> dict[str, Any]:
    """Secrets as the playbook variable rust_service merges into the EnvironmentFile.

    Give the result to `tools.ansible.PlaybookRun(secret_vars=...)`: it reaches Ansible through
    a 0600 file outside the run dir that is deleted after the run, never through extravars.
    """
    return {SECRETS_VAR: dict(secrets)} if secrets else {}
