"""The environment's own certificate authority, for the TLS of its central logs.

Every host of the fleet uploads its journal to systemd-journal-remote on the monitoring host over
HTTPS. Both sides authenticate with certificates of a CA that exists once per environment, on the
controller only:

    .orchestrate/<env>/pki/
      ca.pem  ca.key             the CA; its key (0600) never leaves the controller
      hosts/<name>.pem .key      one certificate per host (key 0600): TLS client for every host, TLS
                                 server too for a monitoring host, whose addresses it names

journal-remote trusts this CA and nothing else, so only hosts of this fleet can upload; a host's
certificate names the host (CN), and journal-remote files what it receives under that name.
A certificate is issued again when it is missing, does not match its key or the CA, names other
addresses than the host has now, or expires within RENEW_BEFORE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.files import atomic_write, file_lock
from orchestrator.fleet.inventory import Host
from orchestrator.tools.x509 import KeyPair, certificate_info, issue, key_matches, new_ca, signed_by

#: a certificate this close to its expiry is issued again by the next `monitoring deploy`
RENEW_BEFORE = timedelta(days=30)


CA_CERT = "ca.pem"


CA_KEY = "ca.key"


HOSTS_DIR = "hosts"


@dataclass(frozen=True)
class HostCertificate:
    """One host's certificate and key on the controller."""

    name: str
    cert: Path
    key: Path
    server: bool
    issued: bool
    """Whether this call issued it (new, or renewed)."""


@dataclass(frozen=True)
class EnvironmentPki:
    """The CA of an environment and the host certificates it signed."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    hosts: dict[str, HostCertificate]

    def host(self, name: str) -> HostCertificate:
        return self.hosts[name]


def ca_name(env: str) -> str:
    """Common name of an environment's CA."""
    return f"orchestrate {env} logs CA"


def host_addresses(host: Host) -> tuple[str, ...]:
    """The addresses a server certificate of `host` names: what other hosts and the controller dial."""
    return tuple(sorted({a for a in (host.private_address, host.address) if a}))


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_pair(cert: Path, key: Path, pair: KeyPair) -> None:
    # the key first: a certificate on disk always has its key beside it
    atomic_write(key, pair.key_pem.decode(), mode=0o600)
    atomic_write(cert, pair.cert_pem.decode(), mode=0o644)


def _ensure_ca(directory: Path, env: str) -> KeyPair:
    cert, key = directory / CA_CERT, directory / CA_KEY
    cert_pem, key_pem = _read(cert), _read(key)
    if cert_pem is not None and key_pem is not None and key_matches(cert_pem, key_pem):
        key.chmod(0o600)
        return KeyPair(cert_pem, key_pem)
    pair = new_ca(ca_name(env), organization="orchestrate")
    _write_pair(cert, key, pair)
    return pair


def _current(cert_pem: bytes | None, key_pem: bytes | None, ca: KeyPair, name: str, server: bool,
             addresses: tuple[str, ...], now: datetime) -> bool:
    """Whether an existing certificate can stay as it is."""
    if cert_pem is None or key_pem is None:
        return False
    if not key_matches(cert_pem, key_pem) or not signed_by(cert_pem, ca.cert_pem):
        return False
    info = certificate_info(cert_pem)
    if info.common_name != name or info.server != server or not info.client:
        return False
    if server and tuple(sorted(info.ip_addresses)) != addresses:
        return False
    return info.not_after - now > RENEW_BEFORE


def ensure_pki(loaded: LoadedEnvironment, hosts: Sequence[Host], *, now: datetime | None = None) -> EnvironmentPki:
    """The environment's CA and a current certificate for every host of `hosts` (created as needed).

    Hosts in group `monitoring` get a server certificate naming their addresses; every host gets
    client authentication. Certificates of hosts no longer in `hosts` stay until the directory is
    removed (destroy): they are harmless without a host, and a host that comes back reuses them.
    """
    now = now or datetime.now(UTC)
    directory = loaded.paths.pki
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    (directory / HOSTS_DIR).mkdir(exist_ok=True)
    with file_lock(directory / ".lock"):
        ca = _ensure_ca(directory, loaded.name)
        found: dict[str, HostCertificate] = {}
        for host in hosts:
            server = "monitoring" in host.groups
            addresses = host_addresses(host) if server else ()
            cert, key = directory / HOSTS_DIR / f"{host.name}.pem", directory / HOSTS_DIR / f"{host.name}.key"
            issued = False
            if not _current(_read(cert), _read(key), ca, host.name, server, addresses, now):
                pair = issue(ca, host.name, dns_names=[host.name], ip_addresses=addresses, server=server,
                             client=True, organization=f"orchestrate {loaded.name}", now=now)
                _write_pair(cert, key, pair)
                issued = True
            key.chmod(0o600)
            found[host.name] = HostCertificate(host.name, cert, key, server, issued)
    return EnvironmentPki(directory=directory, ca_cert=directory / CA_CERT, ca_key=directory / CA_KEY, hosts=found)
