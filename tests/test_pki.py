"""The network CA and server certificates: issuance, expiry, rotation, wrong CA, wrong host."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess

import pytest
from cryptography import x509

from coordinator.errors import CertificateError
from coordinator.pki import (
    NetworkCerts,
    check_server_certificate,
    init_network,
    issue_server_certificate,
    rotate_if_due,
    server_hosts,
)  # fmt: skip

NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


@pytest.fixture
def certs(tmp_path):  # type: ignore[no-untyped-def]
    certs = NetworkCerts(tmp_path / "certs")
    init_network(certs, name="Anchor Motors", hosts=["link.anchor.example", "10.0.0.5", "localhost"], now=NOW)
    return certs


def test_init_makes_a_ca_and_a_server_certificate_openssl_accepts(certs: NetworkCerts) -> None:
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.server_key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    assert server_hosts(cert) == ["link.anchor.example", "localhost", "10.0.0.5"]
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-attime",
            str(int((NOW + dt.timedelta(days=1)).timestamp())),
            "-CAfile",
            str(certs.ca_cert),
            str(certs.server_cert),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    with pytest.raises(CertificateError, match="already holds a network CA"):
        init_network(certs, name="Again", hosts=["x"], now=NOW)


def test_check_names_expiry_wrong_host_and_wrong_ca(certs: NetworkCerts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    left = check_server_certificate(certs, host="10.0.0.5", now=NOW + dt.timedelta(days=10))
    assert left.days == 80
    with pytest.raises(CertificateError, match="expired on 2027-02-23"):
        check_server_certificate(certs, now=NOW + dt.timedelta(days=91))
    with pytest.raises(CertificateError, match="not valid before"):
        check_server_certificate(certs, now=NOW - dt.timedelta(days=1))
    with pytest.raises(CertificateError, match="not other.example"):
        check_server_certificate(certs, host="other.example", now=NOW)
    other = NetworkCerts(tmp_path / "other")
    init_network(other, name="Impostor", hosts=["link.anchor.example"], now=NOW)
    certs.server_cert.write_bytes(other.server_cert.read_bytes())
    with pytest.raises(CertificateError, match="not issued by the network CA"):
        check_server_certificate(certs, now=NOW)


def test_rotation_renews_only_when_due_and_keeps_the_hosts(certs: NetworkCerts) -> None:
    before = certs.server_cert.read_bytes()
    assert not rotate_if_due(certs, now=NOW + dt.timedelta(days=30))
    assert certs.server_cert.read_bytes() == before
    assert rotate_if_due(certs, now=NOW + dt.timedelta(days=80))  # within 14 days of expiry
    renewed = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    assert renewed.not_valid_after_utc == NOW + dt.timedelta(days=80 + 90)
    assert server_hosts(renewed) == ["link.anchor.example", "localhost", "10.0.0.5"]
    assert check_server_certificate(certs, now=NOW + dt.timedelta(days=100)).days > 60
    assert rotate_if_due(certs, now=NOW + dt.timedelta(days=400))  # an expired one is renewed too
    with pytest.raises(CertificateError, match="at least one host"):
        issue_server_certificate(certs, hosts=[], now=NOW)
