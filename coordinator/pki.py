"""The network's certificates: a CA owned by the anchor, and the SuperLink's server certificate.

    sangsaeng coordinator certs init --dir DIR --host coordinator.example --host 10.0.0.5
    sangsaeng coordinator certs rotate --dir DIR          # new server certificate, same CA
    sangsaeng coordinator certs check --dir DIR

DIR holds ``ca.pem`` (given to every supplier), ``ca.key`` (mode 0600, stays with the anchor),
``server.pem`` and ``server.key`` (0600) for the SuperLink. Everything is made with
`cryptography`'s X.509 builder; nothing here implements a primitive.

The CA signs only server certificates: suppliers authenticate to the SuperLink with their own
site keys (Flower SuperNode authentication), not with client certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.errors import CertificateError
from sangsaeng.files import write_private

__all__ = [
    "NetworkCerts", "init_network", "issue_server_certificate", "check_server_certificate",
    "rotate_if_due", "CA_DAYS", "SERVER_DAYS", "RENEW_BEFORE_DAYS",
]  # fmt: skip

CA_DAYS = 3650
SERVER_DAYS = 90
RENEW_BEFORE_DAYS = 14


@dataclass(frozen=True)
class NetworkCerts:
    """Where a network's certificate files live."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        """The network CA certificate that sites pin (ca.pem)."""
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The network CA's private key (ca.key, mode 0600)."""
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's server certificate (server.pem)."""
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        """The server certificate's private key (server.key, mode 0600)."""
        return self.dir / "server.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def init_network(certs: NetworkCerts, *, name: str, hosts: list[str], now: dt.datetime | None = None) -> None:
    """Create the network CA and a first server certificate for `hosts`; refuses to overwrite a CA."""
    if certs.ca_key.exists() or certs.ca_cert.exists():
        raise CertificateError(
            f"{certs.dir} already holds a network CA; use `certs rotate` for a new server certificate"
        )
    certs.dir.mkdir(parents=True, exist_ok=True)
    now = now or _now()
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Sangsaeng network CA")])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    write_private(certs.ca_key, _pem_key(key))
    certs.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issue_server_certificate(certs, hosts=hosts, now=now)


def _load_ca(certs: NetworkCerts) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    for path in (certs.ca_cert, certs.ca_key):
        if not path.exists():
            raise CertificateError(f"{path} is missing: the network CA lives there (create it with `certs init`)")
    key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificate(certs.ca_cert.read_bytes()), key


def issue_server_certificate(
    certs: NetworkCerts, *, hosts: list[str], days: int = SERVER_DAYS, now: dt.datetime | None = None
) -> x509.Certificate:
    """Issue (or replace) the SuperLink's server certificate for `hosts`, signed by the network CA."""
    if not hosts:
        raise CertificateError("a server certificate needs at least one host name or IP address")
    ca_cert, ca_key = _load_ca(certs)
    now = now or _now()
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    # Key first, then certificate: a reader never pairs a new certificate with an old key.
    tmp_key, tmp_cert = certs.server_key.with_suffix(".key.new"), certs.server_cert.with_suffix(".pem.new")
    write_private(tmp_key, _pem_key(key))
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, certs.server_key)
    os.replace(tmp_cert, certs.server_cert)
    return cert


def server_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]


def check_server_certificate(
    certs: NetworkCerts, *, host: str | None = None, now: dt.datetime | None = None
) -> dt.timedelta:
    """Check the server certificate against the CA, the clock and `host`; returns the time left."""
    if not certs.server_cert.exists():
        raise CertificateError(f"{certs.server_cert} is missing (issue one with `certs rotate`)")
    now = now or _now()
    ca_cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(f"{certs.server_cert} was not issued by the network CA {certs.ca_cert}") from exc
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{certs.server_cert} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now >= cert.not_valid_after_utc:
        raise CertificateError(
            f"{certs.server_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue a new one with `sangsaeng coordinator certs rotate`"
        )
    if host is not None and host not in server_hosts(cert):
        raise CertificateError(f"{certs.server_cert} is for {', '.join(server_hosts(cert))}, not {host}")
    return cert.not_valid_after_utc - now


def rotate_if_due(
    certs: NetworkCerts, *, renew_before: dt.timedelta = dt.timedelta(days=RENEW_BEFORE_DAYS),
    now: dt.datetime | None = None,
) -> bool:  # fmt: skip
    """Re-issue the server certificate (same hosts) when it expires within `renew_before` or already has."""
    now = now or _now()
    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    if cert.not_valid_after_utc - now > renew_before:
        return False
    issue_server_certificate(certs, hosts=server_hosts(cert), now=now)
    return True
