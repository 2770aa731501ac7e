"""Invitations, enrolment and the membership lifecycle, with every bad input from the issue."""

from __future__ import annotations

import base64
import stat
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlmodel import select

from client.portal_commands import sign_enrolment
from portal.models import Invite, Membership, SiteCredential, User, utcnow
from tests.portal.factories import API, PASSWORD


def _keys(client, fid, headers):
    response = client.get(f"{API}/federations/{fid}/site-keys", headers=headers)
    assert response.status_code == 200, response.text
    return {k["site_name"]: k for k in response.json()}


def test_full_lifecycle_and_admitted_keys(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    coordinator = portal.coordinator(anchor, fid)
    invite = portal.invite(anchor, fid, "Daehan Precision", "daehan-1")
    assert invite["membership"]["status"] == "invited" and invite["token"].startswith("ssi_")
    body, site_dir = portal.enrol_body(invite["token"])
    enrolled = client.post(f"{API}/sites/enrol", json=body)
    assert enrolled.status_code == 201, enrolled.text
    answer = enrolled.json()
    mid = answer["membership"]["id"]
    assert answer["membership"]["status"] == "enrolled"
    assert answer["membership"]["key_fingerprint"].startswith("SHA256:")
    assert "BEGIN PUBLIC KEY" in answer["portal_signing_key"]
    assert _keys(client, fid, coordinator) == {}  # enrolled is not admitted yet

    site = {"Authorization": f"Bearer {answer['client_token']}"}
    assert client.get(f"{API}/sites/me", headers=site).json()["membership"]["status"] == "enrolled"
    assert client.post(f"{API}/memberships/{mid}/approve", headers=anchor.headers).json()["status"] == "approved"
    assert set(_keys(client, fid, coordinator)) == {"daehan-1"}
    assert _keys(client, fid, coordinator)["daehan-1"]["public_key"] == body["public_key"]
    # The site's first contact after approval makes it active.
    assert client.get(f"{API}/sites/me", headers=site).json()["membership"]["status"] == "active"

    assert client.post(f"{API}/memberships/{mid}/suspend", headers=anchor.headers).json()["status"] == "suspended"
    assert _keys(client, fid, coordinator) == {}
    assert client.post(f"{API}/memberships/{mid}/reinstate", headers=anchor.headers).json()["status"] == "active"
    assert set(_keys(client, fid, anchor.headers)) == {"daehan-1"}
    revoked = client.post(f"{API}/memberships/{mid}/revoke", headers=anchor.headers, json={"reason": "left"})
    assert revoked.json()["status"] == "revoked"
    assert _keys(client, fid, coordinator) == {}  # removed at once
    gone = client.get(f"{API}/sites/me", headers=site)
    assert gone.status_code == 401  # the site's token died with it
    again = client.post(f"{API}/memberships/{mid}/approve", headers=anchor.headers)
    assert again.status_code == 409 and "revoked" in again.json()["detail"]


def test_private_key_and_token_files_are_0600(portal, tmp_path):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    site = portal.site(anchor, fid, "Mode Test", "m-1")
    assert stat.S_IMODE((site.site_dir / "site_key").stat().st_mode) == 0o600
    private = (site.site_dir / "site_key").read_bytes()
    assert b"OPENSSH PRIVATE KEY" in private
    with portal.session() as session:
        stored = session.exec(select(SiteCredential)).all()
    assert all("PRIVATE" not in c.public_key for c in stored)


def test_expired_reused_forged_invites(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    invite = portal.invite(anchor, fid, "Reuse Co", "r-1")
    body, _ = portal.enrol_body(invite["token"])
    assert client.post(f"{API}/sites/enrol", json=body).status_code == 201
    second, _ = portal.enrol_body(invite["token"])
    reused = client.post(f"{API}/sites/enrol", json=second)
    assert reused.status_code == 409 and "already been used" in reused.json()["detail"]

    forged, _ = portal.enrol_body("ssi_" + "A" * 43)
    response = client.post(f"{API}/sites/enrol", json=forged)
    assert response.status_code == 401 and "not valid" in response.json()["detail"]

    late = portal.invite(anchor, fid, "Late Co", "late-1")
    with portal.session() as session:
        row = session.exec(select(Invite).where(Invite.membership_id == late["membership"]["id"])).one()
        row.expires_at = utcnow() - timedelta(minutes=1)
        session.add(row)
        session.commit()
    body, _ = portal.enrol_body(late["token"])
    expired = client.post(f"{API}/sites/enrol", json=body)
    assert expired.status_code == 410 and "expired" in expired.json()["detail"]
    with portal.session() as session:
        assert session.get(Membership, late["membership"]["id"]).status == "invited"  # nothing changed


def test_second_enrolment_with_the_same_key_is_refused(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    first = portal.invite(anchor, fid, "Twin Co", "twin-1")
    body, site_dir = portal.enrol_body(first["token"])
    assert client.post(f"{API}/sites/enrol", json=body).status_code == 201
    second = portal.invite(anchor, fid, "Twin Co", "twin-2")
    key = serialization.load_ssh_private_key((site_dir / "site_key").read_bytes(), None)
    same = {
        "invite_token": second["token"],
        "public_key": body["public_key"],
        "proof": sign_enrolment(key, second["token"], body["public_key"]),
    }
    response = client.post(f"{API}/sites/enrol", json=same)
    assert response.status_code == 409 and "already registered" in response.json()["detail"]
    with portal.session() as session:
        assert session.get(Membership, second["membership"]["id"]).status == "invited"


def _openssh(public_key) -> str:
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize(
    ("make_key", "reason"),
    [
        (lambda: "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ== broken", "malformed"),
        (lambda: "not a key at all", "malformed"),
        (lambda: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "malformed"),
        (lambda: _openssh(ed25519.Ed25519PrivateKey.generate().public_key()), "got Ed25519"),
        (lambda: _openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()), "got RSA"),
        (lambda: _openssh(ec.generate_private_key(ec.SECP256R1()).public_key()), "secp256r1"),
    ],
)
def test_malformed_or_wrong_type_keys_get_422(portal, client, make_key, reason):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    invite = portal.invite(anchor, fid, "Key Co", "k-1")
    body = {"invite_token": invite["token"], "public_key": make_key(), "proof": base64.b64encode(b"x").decode()}
    response = client.post(f"{API}/sites/enrol", json=body)
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    with portal.session() as session:
        assert session.get(Membership, invite["membership"]["id"]).status == "invited"
        assert session.exec(select(Invite)).one().used_at is None  # the invite is still usable


def test_proof_of_possession_is_required(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    invite = portal.invite(anchor, fid, "Proof Co", "p-1")
    body, _ = portal.enrol_body(invite["token"])
    other = ec.generate_private_key(ec.SECP384R1())
    body["proof"] = sign_enrolment(other, invite["token"], body["public_key"])
    response = client.post(f"{API}/sites/enrol", json=body)
    assert response.status_code == 400 and "proof of possession" in response.json()["detail"]


def test_approve_twice_and_invalid_transitions(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    invite = portal.invite(anchor, fid, "Twice Co", "t-1")
    mid = invite["membership"]["id"]
    early = client.post(f"{API}/memberships/{mid}/approve", headers=anchor.headers)
    assert early.status_code == 409 and "not enrolled yet" in early.json()["detail"]
    body, _ = portal.enrol_body(invite["token"])
    client.post(f"{API}/sites/enrol", json=body)
    assert client.post(f"{API}/memberships/{mid}/approve", headers=anchor.headers).status_code == 200
    twice = client.post(f"{API}/memberships/{mid}/approve", headers=anchor.headers)
    assert twice.status_code == 409 and "already approved" in twice.json()["detail"]
    assert client.post(f"{API}/memberships/{mid}/reinstate", headers=anchor.headers).status_code == 409
    assert client.post(f"{API}/memberships/{mid}/explode", headers=anchor.headers).status_code == 422
    assert client.post(f"{API}/memberships/99999/approve", headers=anchor.headers).status_code == 404


def test_reject_and_duplicate_site_names(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    site = portal.site(anchor, fid, "Reject Co", "rj-1", approve=False)
    assert (
        client.post(f"{API}/memberships/{site.membership_id}/reject", headers=anchor.headers).json()["status"]
        == "rejected"
    )
    assert client.get(f"{API}/sites/me", headers=site.headers).status_code == 401
    dup = client.post(
        f"{API}/federations/{fid}/invites",
        headers=anchor.headers,
        json={"organisation_name": "Other Co", "site_name": "rj-1"},
    )
    assert dup.status_code == 409 and "already used" in dup.json()["detail"]
    auditor = portal.person("auditor")
    not_supplier = client.post(
        f"{API}/federations/{fid}/invites",
        headers=anchor.headers,
        json={"organisation_name": auditor.org_name, "site_name": "x-1"},
    )
    assert not_supplier.status_code == 400 and "not a supplier" in not_supplier.json()["detail"]


def test_enrolment_can_create_the_supplier_admin(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    portal.site(anchor, fid, "Admin Co", "ad-1", admin_email="boss@admin.co")
    login = client.post(
        f"{API}/login/access-token", data={"username": "boss@admin.co", "password": "correct horse battery"}
    )
    assert login.status_code == 200
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert client.get(f"{API}/users/me", headers=headers).json()["role"] == "supplier"
    mine = client.get(f"{API}/federations/{fid}/memberships", headers=headers).json()
    assert [m["site_name"] for m in mine] == ["ad-1"]


# -- invites by organisation name (issue 12, finding 2) ------------------------------------------
def _login(client, email: str) -> dict[str, str]:
    response = client.post(f"{API}/login/access-token", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _visible(client, headers) -> list[int]:
    response = client.get(f"{API}/federations", headers=headers)
    assert response.status_code == 200, response.text
    return sorted(f["id"] for f in response.json())


def test_invite_by_name_hands_out_no_membership_of_another_anchors_supplier(portal, client):
    anchor_y = portal.anchor()
    fed_y = portal.federation(anchor_y)
    portal.site(anchor_y, fed_y["id"], "Delta Forge", "delta-y-1", admin_email="admin@delta.example")
    anchor_x = portal.anchor()
    fid_x = portal.federation(anchor_x)["id"]

    invite = portal.invite(anchor_x, fid_x, "Delta Forge", "delta-x-1")
    assert invite["organisation_admin_required"] is True
    body, _ = portal.enrol_body(invite["token"])
    mole = {"admin_email": "mole@x.example", "admin_password": PASSWORD}
    attempts = {
        "an account in Delta Forge": client.post(f"{API}/sites/enrol", json=body | mole),
        "a site in Delta Forge's name": client.post(f"{API}/sites/enrol", json=body),
        "signed in as the inviting anchor": client.post(f"{API}/sites/enrol", json=body, headers=anchor_x.headers),
        "signed in as another supplier": client.post(
            f"{API}/sites/enrol", json=body, headers=portal.person("supplier").headers
        ),
    }
    for attempt, response in attempts.items():
        assert response.status_code == 403, f"{attempt}: {response.status_code} {response.text}"
        detail = response.json()["detail"]
        assert "signed-in admin of that organisation" in detail and "new organisation name" in detail, attempt
        for leaked in ("Delta Forge", fed_y["name"], "delta-y-1", "admin@delta.example"):
            assert leaked not in detail, f"{attempt}: '{leaked}' in {detail!r}"
    rejected = client.post(f"{API}/login/access-token", data={"username": "mole@x.example", "password": PASSWORD})
    assert rejected.status_code == 401
    with portal.session() as session:
        assert session.exec(select(User).where(User.email == "mole@x.example")).first() is None
        mid = invite["membership"]["id"]
        assert session.get(Membership, mid).status == "invited"
        assert session.exec(select(Invite).where(Invite.membership_id == mid)).one().used_at is None
        assert session.exec(select(SiteCredential).where(SiteCredential.membership_id == mid)).first() is None

    # Delta Forge joins X's federation through its own admin, signed in; that creates no account.
    delta_admin = _login(client, "admin@delta.example")
    with_account = client.post(f"{API}/sites/enrol", json=body | mole, headers=delta_admin)
    assert with_account.status_code == 403 and "admin_email cannot add an account" in with_account.json()["detail"]
    joined = client.post(f"{API}/sites/enrol", json=body, headers=delta_admin)
    assert joined.status_code == 201, joined.text
    assert joined.json()["membership"]["organisation_name"] == "Delta Forge"
    assert _visible(client, delta_admin) == sorted([fed_y["id"], fid_x])
    cookie_only = portal.invite(anchor_x, fid_x, "Delta Forge", "delta-x-2")
    cookie_body, _ = portal.enrol_body(cookie_only["token"])
    client.cookies.set("sangsaeng_session", delta_admin["Authorization"].split()[1])
    try:  # the web session cookie is not a signature: a cross-site form could send it
        assert client.post(f"{API}/sites/enrol", json=cookie_body).status_code == 403
    finally:
        client.cookies.clear()


def test_a_separate_organisation_name_sees_only_the_inviting_anchors_federation(portal, client):
    anchor_y = portal.anchor()
    fed_y = portal.federation(anchor_y)
    portal.site(anchor_y, fed_y["id"], "Epsilon Cast", "eps-y-1")
    anchor_x = portal.anchor()
    fid_x = portal.federation(anchor_x)["id"]
    invite = portal.invite(anchor_x, fid_x, "Epsilon Cast (X)", "eps-x-1")
    assert invite["organisation_admin_required"] is False
    body, _ = portal.enrol_body(invite["token"])
    body |= {"admin_email": "boss@eps-x.example", "admin_password": PASSWORD}
    assert client.post(f"{API}/sites/enrol", json=body).status_code == 201
    boss = _login(client, "boss@eps-x.example")
    assert _visible(client, boss) == [fid_x]  # before approval, and
    assert client.get(f"{API}/federations/{fed_y['id']}", headers=boss).status_code == 404
    assert client.get(f"{API}/federations/{fed_y['id']}/memberships", headers=boss).status_code == 404


def test_the_anchor_keeps_control_of_its_own_suppliers_until_another_anchor_invites_them(portal, client):
    anchor_x = portal.anchor()
    first = portal.federation(anchor_x)["id"]
    second = portal.federation(anchor_x)["id"]
    portal.site(anchor_x, first, "Own Forge", "own-1", admin_email="one@own.example")
    # A second site, and a site in the anchor's other federation, still enrol with an account.
    for fid, site, email in ((first, "own-2", "two@own.example"), (second, "own-3", "three@own.example")):
        invite = portal.invite(anchor_x, fid, "Own Forge", site)
        assert invite["organisation_admin_required"] is False, site
        body, _ = portal.enrol_body(invite["token"])
        answer = client.post(f"{API}/sites/enrol", json=body | {"admin_email": email, "admin_password": PASSWORD})
        assert answer.status_code == 201, answer.text

    # Another anchor inviting the name gets the admin-only invite, and X's control ends with it:
    # an account X's invite made now would read the other anchor's federation.
    anchor_y = portal.anchor()
    fed_y = portal.federation(anchor_y)["id"]
    assert portal.invite(anchor_y, fed_y, "Own Forge", "own-y")["organisation_admin_required"] is True
    late = portal.invite(anchor_x, first, "Own Forge", "own-4")
    assert late["organisation_admin_required"] is True
    body, _ = portal.enrol_body(late["token"])
    mole = {"admin_email": "mole@own.example", "admin_password": PASSWORD}
    refused = client.post(f"{API}/sites/enrol", json=body | mole)
    assert refused.status_code == 403, refused.text


def test_an_organisation_no_invite_created_needs_its_own_admin(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    other_anchor = portal.anchor()  # the organisation is another anchor's: this one does not control it
    made = client.post(
        f"{API}/organisations", headers=other_anchor.headers, json={"name": "Zeta Works", "kind": "supplier"}
    )
    assert made.status_code == 201, made.text
    invite = portal.invite(anchor, fid, "Zeta Works", "zeta-1")
    assert invite["organisation_admin_required"] is True
    body, _ = portal.enrol_body(invite["token"])
    assert client.post(f"{API}/sites/enrol", json=body).status_code == 403
    zeta_admin = portal.supplier_user("Zeta Works")
    assert client.post(f"{API}/sites/enrol", json=body, headers=zeta_admin.headers).status_code == 201
