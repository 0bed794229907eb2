"""SSH keys of the local fleet: the project's client key, and the known_hosts file its hosts'
keys (generated on the controller, orchestrator.fleet.cloudinit) are recorded in before first contact.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orchestrator import paths
from orchestrator.files import file_lock
from orchestrator.tools.process import run_command


def ssh_key_path(project_dir: Path) -> Path:
    """The project's SSH private key: PROJECT/.orchestrate/ssh/id_ed25519."""
    return paths.ssh_key(project_dir)


def ensure_ssh_key(project_dir: Path) -> Path:
    """Generate the project's key pair once (0600 private key); return the private key path."""
    key = ssh_key_path(project_dir)
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    key.parent.chmod(0o700)
    with file_lock(key.parent / ".lock"):
        if not (key.exists() and key.with_suffix(".pub").exists()):
            key.unlink(missing_ok=True)
            key.with_suffix(".pub").unlink(missing_ok=True)
            run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"orchestrate@{project_dir.name}",
                         "-f", key])
    key.chmod(0o600)
    return key


def known_hosts_without(text: str, addresses: Iterable[str]) -> str:
    """`text` (a known_hosts file) without the lines whose host field names one of `addresses`."""
    drop = set(addresses)
    kept = []
    for line in text.splitlines():
        hosts = line.split(" ", 1)[0].split(",") if line.strip() else []
        if not drop.intersection(h.strip("[]").split("]:")[0] for h in hosts):
            kept.append(line)
    return "".join(f"{line}\n" for line in kept)


def _update_known_hosts(path: Path, address: str, public_key: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        text = path.read_text() if path.exists() else ""
        text = known_hosts_without(text, [address])
        if public_key:
            key_type, key_data = public_key.split()[:2]
            text += f"{address} {key_type} {key_data}\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
