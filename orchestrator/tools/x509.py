"""X.509 for the project's own TLS (the `cryptography` library): a certificate authority and the
certificates it signs, as PEM bytes. Pure: nothing is read or written here.

Keys are ECDSA P-256 (fast to make, accepted by GnuTLS in systemd-journal-remote and by OpenSSL in
libcurl, which systemd-journal-upload uses); signatures SHA-256.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: how long a certificate is valid before `now` (clocks of hosts and controller differ a little)
BACKDATE = timedelta(hours=1)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertificateInfo:
    """What a certificate says about itself."""

    common_name: str
    issuer: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime
    is_ca: bool
    server: bool
    client: bool


def _name(common_name: str, organization: str | None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(common_name: str, *, organization: str | None = None, days: int = 3650,
           now: datetime | None = None) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, organization)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_key_pem(key))


def issue(ca: KeyPair, common_name: str, *, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (),
          server: bool = False, client: bool = True, days: int = 825, organization: str | None = None,
          now: datetime | None = None) -> KeyPair:
    """A leaf certificate for `common_name` signed by `ca`, with a new key.

    `server` and `client` choose the extended key usages (TLS server and/or client authentication);
    `dns_names` and `ip_addresses` become the subject alternative names a TLS client checks.
    """
    if not (server or client):
        raise ValueError("a certificate needs server or client usage")
    now = now or datetime.now(UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_key_pem(key))


def certificate_info(cert_pem: bytes) -> CertificateInfo:
    """The subject, issuer, alternative names, expiry and usages of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)

    def extension(kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
        try:
            return cert.extensions.get_extension_for_class(kind).value
        except x509.ExtensionNotFound:
            return None

    san = extension(x509.SubjectAlternativeName)
    dns = tuple(san.get_values_for_type(x509.DNSName)) if isinstance(san, x509.SubjectAlternativeName) else ()
    ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress)) \
        if isinstance(san, x509.SubjectAlternativeName) else ()
    basic = extension(x509.BasicConstraints)
    eku = extension(x509.ExtendedKeyUsage)
    usages = set(eku) if isinstance(eku, x509.ExtendedKeyUsage) else set()
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateInfo(
        common_name=str(common[0].value) if common else "",
        issuer=str(issuer[0].value) if issuer else "",
        dns_names=dns,
        ip_addresses=ips,
        not_after=cert.not_valid_after_utc,
        is_ca=isinstance(basic, x509.BasicConstraints) and basic.ca,
        server=ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
    )


def signed_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """Whether `cert_pem` was issued by the CA of `ca_cert_pem` (its signature verifies)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the private key `key_pem` belongs to the certificate `cert_pem`."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(serialization.Encoding.PEM, public)
                == key.public_key().public_bytes(serialization.Encoding.PEM, public))
