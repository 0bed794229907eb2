"""ssh-keygen, for release signatures: an ed25519 key pair and `-Y sign` (OpenSSH's SSHSIG format,
which every host checks with `ssh-keygen -Y verify`, no new package needed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.tools.process import run_command

#: bound of one ssh-keygen call (key generation and signatures take milliseconds)
TIMEOUT = 30.0


def generate_argv(path: Path, comment: str) -> list[str]:
    """argv that writes a new ed25519 key pair without passphrase to `path` and `path`.pub."""
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]


def sign_argv(key: Path, namespace: str, message: Path) -> list[str]:
    """argv that signs the file `message` with `key` in `namespace`, writing `message`.sig."""
    return ["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace, str(message)]


def generate_ed25519(path: Path, comment: str) -> None:
    """Create an ed25519 key pair at `path` (mode 0600) and `path`.pub; both must not exist."""
    run_command(generate_argv(path, comment), timeout=TIMEOUT)
    path.chmod(0o600)


def sign(key: Path, namespace: str, message: bytes) -> str:
    """The armored SSHSIG signature of `message` by `key` in `namespace`.

    The message goes through a file in a private temporary directory: ssh-keygen signs a file
    byte for byte, where text on standard input would pass through an encoding.
    """
    with tempfile.TemporaryDirectory(prefix="orchestrate-sign-") as tmp:
        path = Path(tmp) / "message"
        path.write_bytes(message)
        run_command(sign_argv(key, namespace, path), timeout=TIMEOUT)
        return path.with_name("message.sig").read_text(encoding="ascii")
