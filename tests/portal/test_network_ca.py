"""Enrolment gives a site everything it needs: the network CA certificate (checked) and the SuperLink address.

The attacker's tests come first: nobody but the anchor (its admins, its coordinator) sets the
network; a certificate that is not a CA's, or is expired, is refused; an invitation whose CA
fingerprint differs from the federation's is refused before the invite is used; and a site
never keeps a CA certificate that does not match its invitation, whatever the portal says.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import portal_commands as pc
from coordinator.pki import NetworkCerts, init_network
from tests.portal.factories import API, network

SUPERLINK = "fleet.anchor.example:9092"


def _ca(tmp_path: Path, name: str = "Anchor") -> str:
    certs = NetworkCerts(tmp_path / f"certs-{name}")
    init_network(certs, name=name, hosts=["127.0.0.1"])
    return certs.ca_cert.read_text(encoding="ascii")


def _self_signed(*, ca: bool, days: int = 30, start: int = -1) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start))
        .not_valid_after(now + dt.timedelta(days=start + days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _fingerprint(pem: str) -> str:
    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()


def test_only_the_anchor_and_its_coordinator_set_the_network(portal, client, tmp_path):
    net = network(portal)
    other = network(portal)  # another anchor's federation
    body = {"ca_cert_pem": _ca(tmp_path), "superlink_address": SUPERLINK}
    url = f"{API}/federations/{net.fid}/network"
    for who in (
        net.supplier_a.headers,
        net.site_a.headers,
        net.auditor.headers,
        other.anchor.headers,
        other.coordinator,
    ):
        answer = client.put(url, headers=who, json=body)
        assert answer.status_code in (403, 404), answer.text
    assert client.put(url, json=body).status_code == 401
    assert (
        client.get(f"{API}/federations/{net.fid}", headers=net.anchor.headers).json()["network_ca_fingerprint"] is None
    )

    done = client.put(url, headers=net.anchor.headers, json=body)
    assert done.status_code == 200, done.text
    assert done.json()["network_ca_fingerprint"] == _fingerprint(body["ca_cert_pem"])
    assert done.json()["superlink_address"] == SUPERLINK
    again = client.put(url, headers=net.coordinator, json={**body, "ca_cert_pem": _ca(tmp_path, "Rotated")})
    assert again.status_code == 200, again.text
    trail = client.get(f"{API}/federations/{net.fid}/audit", headers=net.auditor.headers)
    assert trail.status_code == 200
    changes = [e for e in trail.json()["events"] if e["action"] == "federation.network_set"]  # newest first
    assert [e["detail"]["previous"] for e in changes] == [_fingerprint(body["ca_cert_pem"]), None]


@pytest.mark.parametrize(
    ("pem", "problem"),
    [
        ("not a certificate", "not a PEM certificate"),
        (_self_signed(ca=False), "not a CA certificate"),
        (_self_signed(ca=True, days=1, start=-10), "not valid now"),
    ],
    ids=["garbage", "leaf", "expired"],
)
def test_a_certificate_that_is_not_a_valid_ca_is_refused(portal, client, pem, problem):
    net = network(portal)
    answer = client.put(
        f"{API}/federations/{net.fid}/network",
        headers=net.anchor.headers,
        json={"ca_cert_pem": pem, "superlink_address": SUPERLINK},
    )
    assert answer.status_code == 400 and problem in answer.json()["detail"], answer.text


def test_a_site_enrols_with_the_invitation_alone_and_keeps_the_checked_ca(portal, client, tmp_path):
    net = network(portal)
    ca = _ca(tmp_path)
    client.put(
        f"{API}/federations/{net.fid}/network",
        headers=net.anchor.headers,
        json={"ca_cert_pem": ca, "superlink_address": SUPERLINK},
    )
    invite = portal.invite(net.anchor, net.fid, "Gamma Press", "gamma-line-1")
    assert invite["network_ca_fingerprint"] == _fingerprint(ca)
    assert invite["invitation"] == f"{invite['token']}#{_fingerprint(ca)}"

    site_dir = tmp_path / "site"
    record = pc.enroll("http://testserver", invite["invitation"], site_dir, http=client)
    assert record["superlink"] == SUPERLINK and record["ca_fingerprint"] == _fingerprint(ca)
    assert (site_dir / record["ca_cert"]).read_text(encoding="ascii").strip() == ca.strip()
    assert json.loads((site_dir / "site.json").read_text())["superlink"] == SUPERLINK


def test_a_wrong_ca_fingerprint_is_refused_and_the_invite_stays_usable(portal, client, tmp_path):
    net = network(portal)
    ca = _ca(tmp_path)
    client.put(
        f"{API}/federations/{net.fid}/network",
        headers=net.anchor.headers,
        json={"ca_cert_pem": ca, "superlink_address": SUPERLINK},
    )
    invite = portal.invite(net.anchor, net.fid, "Delta Cast", "delta-line-1")
    forged = f"{invite['token']}#{_fingerprint(_ca(tmp_path, 'Mallory'))}"
    with pytest.raises(
        pc.PortalClientError, match=r"409.*invitation names network CA certificate .* invite stays unused"
    ):
        pc.enroll("http://testserver", forged, tmp_path / "forged-site", http=client)
    assert not (tmp_path / "forged-site" / "site.json").exists()
    record = pc.enroll("http://testserver", invite["invitation"], tmp_path / "site", http=client)  # the real one works
    assert record["ca_fingerprint"] == _fingerprint(ca)


class _LyingPortal:
    """The real portal behind a proxy that swaps the CA certificate in the enrolment answer (a portal or
    network in the middle): the site must not keep it, even though the portal accepted the fingerprint."""

    def __init__(self, client, pem: str):
        self.client, self.pem = client, pem

    def __getattr__(self, name):
        return getattr(self.client, name)

    def request(self, method, url, **kwargs):
        response = self.client.request(method, url, **kwargs)
        if url.endswith("/sites/enrol") and response.status_code == 201:
            body = response.json() | {"network_ca_pem": self.pem}
            response._content = json.dumps(body).encode()
        return response


def test_a_site_never_keeps_a_ca_that_does_not_match_its_invitation(portal, client, tmp_path):
    net = network(portal)
    client.put(
        f"{API}/federations/{net.fid}/network",
        headers=net.anchor.headers,
        json={"ca_cert_pem": _ca(tmp_path), "superlink_address": SUPERLINK},
    )
    invite = portal.invite(net.anchor, net.fid, "Epsilon Tools", "epsilon-line-1")
    site_dir = tmp_path / "site"
    lying = _LyingPortal(client, _ca(tmp_path, "Mallory"))
    with pytest.raises(pc.PortalClientError, match=r"fingerprint .* is not the invitation's .* not saved"):
        pc.enroll("http://testserver", invite["invitation"], site_dir, http=lying)
    record = json.loads((site_dir / "site.json").read_text())
    assert "ca_cert" not in record and "superlink" not in record and not (site_dir / "network-ca.pem").exists()

    # An invitation without the fingerprint (the bare token) cannot vouch for the certificate either.
    bare = portal.invite(net.anchor, net.fid, "Zeta Weld", "zeta-line-1")
    record = pc.enroll("http://testserver", bare["token"], tmp_path / "bare", http=client)
    assert "carried no fingerprint" in record["warning"] and "not saved" in record["warning"]
    assert "ca_cert" not in record and "superlink" not in record
    assert not (tmp_path / "bare" / "network-ca.pem").exists()


def test_a_malformed_fingerprint_in_the_invitation_is_named():
    with pytest.raises(pc.PortalClientError, match="not 64 hex digits"):
        pc.split_invitation("ssi_token#abc")
    assert pc.split_invitation(" ssi_token ") == ("ssi_token", None)
    assert pc.split_invitation("ssi_t#" + "AB:" * 31 + "AB") == ("ssi_t", "ab" * 32)
