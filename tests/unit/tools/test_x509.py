"""The x509 adapter: a CA that signs leaf certificates only, and leaves with the names and usages asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509 as cx509

from orchestrator.tools.x509 import KeyPair, certificate_info, issue, key_matches, new_ca, signed_by


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return new_ca("orchestrate test CA", organization="orchestrate")


def test_the_ca_is_a_ca_that_signs_leaves_only(ca: KeyPair) -> None:
    info = certificate_info(ca.cert_pem)
    assert info.is_ca and info.common_name == "orchestrate test CA" and info.issuer == info.common_name
    cert = cx509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.extensions.get_extension_for_class(cx509.BasicConstraints).value.path_length == 0
    assert key_matches(ca.cert_pem, ca.key_pem)
    assert b"PRIVATE KEY" in ca.key_pem and b"ENCRYPTED" not in ca.key_pem


def test_a_server_certificate_names_its_addresses_and_serves_and_authenticates(ca: KeyPair) -> None:
    pair = issue(ca, "dev-mon-1", dns_names=["dev-mon-1"], ip_addresses=["10.213.10.12"], server=True)
    info = certificate_info(pair.cert_pem)
    assert (info.common_name, info.issuer) == ("dev-mon-1", "orchestrate test CA")
    assert info.ip_addresses == ("10.213.10.12",) and info.dns_names == ("dev-mon-1",)
    assert info.server and info.client and not info.is_ca
    assert signed_by(pair.cert_pem, ca.cert_pem) and key_matches(pair.cert_pem, pair.key_pem)


def test_a_client_certificate_cannot_serve(ca: KeyPair) -> None:
    info = certificate_info(issue(ca, "dev-app-1").cert_pem)
    assert info.client and not info.server and info.ip_addresses == ()


def test_a_certificate_of_another_ca_is_not_signed_by_this_one(ca: KeyPair) -> None:
    other = new_ca("orchestrate test CA")  # the same name, another key: a forgery
    forged = issue(other, "dev-app-1")
    assert not signed_by(forged.cert_pem, ca.cert_pem)
    assert not key_matches(forged.cert_pem, issue(ca, "dev-app-1").key_pem)


def test_a_leaf_never_outlives_its_ca() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    short = new_ca("short", days=10, now=now)
    leaf = issue(short, "dev-app-1", days=825, now=now)
    assert certificate_info(leaf.cert_pem).not_after <= certificate_info(short.cert_pem).not_after
    assert certificate_info(short.cert_pem).not_after - now == timedelta(days=10)


def test_a_certificate_needs_a_usage(ca: KeyPair) -> None:
    with pytest.raises(ValueError, match="server or client"):
        issue(ca, "dev-app-1", client=False, server=False)
