"""Reading an ansible-vault payload without importing Ansible.

Ansible's vault module brings its configuration and templating along: a fifth of a second of
every `deploy`, which reads the environment's secrets. The payload `ansible-vault` writes is small
and fixed: a header line `$ANSIBLE_VAULT;1.1;AES256` (1.2 adds a vault id), then, in lines of 80,
the hex of `hex(salt) \\n hex(hmac) \\n hex(ciphertext)`. PBKDF2-HMAC-SHA256 (10,000 rounds) of the
password and the salt gives 80 bytes: the AES-256 key, the HMAC key and the counter block. The
HMAC-SHA256 of the ciphertext is checked first; then AES-CTR decrypts it and the PKCS#7 padding
is removed. AES is `cryptography`'s, as in Ansible; the key derivation and the HMAC are the
standard library's.

`decrypt` reads versions 1.1 and 1.2 with cipher AES256 (what every supported Ansible writes);
anything else is left to Ansible (`read`). Writing is always Ansible's.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from typing import Any

HEADER = b"$ANSIBLE_VAULT"
#: (version, cipher) pairs `decrypt` reads itself
READ_HERE = frozenset({("1.1", "AES256"), ("1.2", "AES256")})
ROUNDS = 10_000
KEY_BYTES = 32
COUNTER_BYTES = 16


class VaultError(ValueError):
    """The payload is malformed, or the password is not the one it was encrypted with."""


def is_vault(raw: bytes) -> bool:
    """Whether `raw` is an ansible-vault payload: ASCII that starts with the header (Ansible's test)."""
    try:
        raw.decode("ascii")
    except UnicodeDecodeError:
        return False
    return raw.startswith(HEADER)


def envelope(raw: bytes) -> tuple[str, str, bytes]:
    """(version, cipher, vaulttext) of a payload: the header's fields and the body without its line breaks."""
    if not is_vault(raw):
        raise VaultError("not an ansible-vault payload (no header, or not ASCII)")
    lines = raw.splitlines()
    fields = lines[0].strip().split(b";")
    if len(fields) < 3 or fields[0] != HEADER:
        raise VaultError("not an ansible-vault payload (bad header)")
    return fields[1].strip().decode("ascii"), fields[2].strip().decode("ascii"), b"".join(lines[1:])


def decrypt(raw: bytes, password: bytes) -> bytes | None:
    """The plaintext of `raw`; None when its version or cipher is not one read here (see `read`).

    Raises VaultError for a malformed payload or a wrong password (the HMAC does not match).
    """
    version, cipher, vaulttext = envelope(raw)
    if (version, cipher) not in READ_HERE:
        return None
    try:
        salt_hex, mac_hex, ciphertext_hex = binascii.unhexlify(vaulttext).split(b"\n", 2)
        salt, mac, ciphertext = (binascii.unhexlify(part) for part in (salt_hex, mac_hex, ciphertext_hex))
    except (binascii.Error, ValueError):
        raise VaultError("malformed ansible-vault payload (its body is not the hex Ansible writes)") from None
    derived = hashlib.pbkdf2_hmac("sha256", password, salt, ROUNDS, 2 * KEY_BYTES + COUNTER_BYTES)
    aes_key, mac_key, counter = derived[:KEY_BYTES], derived[KEY_BYTES:2 * KEY_BYTES], derived[2 * KEY_BYTES:]
    if not hmac.compare_digest(hmac.new(mac_key, ciphertext, hashlib.sha256).digest(), mac):
        raise VaultError("the HMAC does not match: wrong vault password (or a damaged file)")
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(counter)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(decryptor.update(ciphertext) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:
        raise VaultError("malformed ansible-vault payload (bad padding)") from None


def ansible_vault(password: bytes) -> Any:
    """Ansible's own VaultLib for `password` (imported only here: it is slow to import)."""
    from ansible.parsing.vault import VaultLib, VaultSecret  # type: ignore[import-untyped]

    return VaultLib([("default", VaultSecret(password))])


def read(raw: bytes, password: bytes) -> bytes:
    """The plaintext of `raw`: `decrypt`, or Ansible for a version or cipher not read here.

    Raises VaultError for a malformed payload or a wrong password, whichever reads it.
    """
    plaintext = decrypt(raw, password)
    if plaintext is not None:
        return plaintext
    from ansible.errors import AnsibleError  # type: ignore[import-untyped]

    try:
        found: bytes = ansible_vault(password).decrypt(raw)
    except AnsibleError as exc:
        raise VaultError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return found
