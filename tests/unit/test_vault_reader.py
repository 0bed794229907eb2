"""orchestrator.config.vault: reads what Ansible's vault writes, refuses what it would refuse."""

from __future__ import annotations

import binascii
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret  # type: ignore[import-untyped]

from orchestrator.config import vault

TEXTS = ["A: b\n", "", "x" * 16, "HELLO_SECRET: \"ünïcode — and a long line " + "z" * 300 + "\"\n"]


def ansible_payload(plaintext: bytes, password: bytes, vault_id: str | None = None) -> bytes:
    secret = VaultSecret(password)
    lib = VaultLib([(vault_id or "default", secret)])
    payload: bytes = lib.encrypt(plaintext, secret=secret, vault_id=vault_id)
    return payload


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("vault_id", [None, "prod"])
def test_reads_what_ansible_writes_in_both_formats(text: str, vault_id: str | None) -> None:
    payload = ansible_payload(text.encode("utf-8"), b"pw \xc3\xa9", vault_id)
    assert payload.startswith(b"$ANSIBLE_VAULT;1.2;AES256;prod" if vault_id else b"$ANSIBLE_VAULT;1.1;AES256")
    assert vault.decrypt(payload, b"pw \xc3\xa9") == text.encode("utf-8")
    # and Ansible reads what it wrote the same way (the reference this reader follows)
    assert vault.ansible_vault(b"pw \xc3\xa9").decrypt(payload) == text.encode("utf-8")


def test_a_wrong_password_or_a_damaged_payload_is_refused() -> None:
    payload = ansible_payload(b"A: b\n", b"right")
    with pytest.raises(vault.VaultError, match="wrong vault password"):
        vault.decrypt(payload, b"wrong")
    header, *body = payload.splitlines()
    salt, mac, ciphertext = binascii.unhexlify(b"".join(body)).split(b"\n", 2)
    damaged = bytearray(ciphertext)
    damaged[-1] = ord("0") if damaged[-1] != ord("0") else ord("1")  # still hex: one digit of the ciphertext
    with pytest.raises(vault.VaultError, match="HMAC"):
        vault.decrypt(header + b"\n" + binascii.hexlify(b"\n".join([salt, mac, bytes(damaged)])), b"right")
    with pytest.raises(vault.VaultError, match="hex"):
        vault.decrypt(header + b"\nnot-hex\n", b"right")
    with pytest.raises(vault.VaultError, match="header"):
        vault.decrypt(b"$ANSIBLE_VAULT\n00\n", b"right")
    with pytest.raises(vault.VaultError, match="ASCII"):
        vault.decrypt(payload + "é".encode(), b"right")


def test_another_version_is_left_to_ansible() -> None:
    payload = ansible_payload(b"A: b\n", b"pw")
    other = payload.replace(b"$ANSIBLE_VAULT;1.1;AES256", b"$ANSIBLE_VAULT;1.1;AES", 1)
    assert vault.decrypt(other, b"pw") is None
    with pytest.raises(vault.VaultError):  # Ansible has no such cipher either: its error, as a VaultError
        vault.read(other, b"pw")
    assert vault.read(payload, b"pw") == b"A: b\n"


def test_what_is_a_vault_payload() -> None:
    assert vault.is_vault(b"$ANSIBLE_VAULT;1.1;AES256\n3031\n")
    assert not vault.is_vault(b"A: b\n")
    assert not vault.is_vault("$ANSIBLE_VAULT;1.1;AES256 é".encode())  # not ASCII: not a payload (as Ansible)


def test_reading_secrets_does_not_import_ansible(project_copy: Path) -> None:
    password = project_copy / "inventories" / "dev" / ".vault-password-dev"
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from orchestrator.config.loader import Project\n"
        "from orchestrator.config.secrets import load_secrets\n"
        f"loaded = Project(Path({str(project_copy)!r})).load('dev')\n"
        f"found = load_secrets(loaded, environ={{'ORCHESTRATE_VAULT_PASSWORD_FILE': {str(password)!r}}})\n"
        "assert found, 'the example has secrets'\n"
        "print(sorted(m for m in sys.modules if m == 'ansible' or m.startswith('ansible.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
