"""A single-use invite enrols once, even when many enrolments race with it (issue 12, finding 3).

The pen test fired twelve enrolments with one invite at `sangsaeng portal serve` and got six
site keys and six client tokens. These tests do the same against the real portal served by
uvicorn on a loopback port, on SQLite and on PostgreSQL, with real concurrent HTTP requests.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from portal.cli import app as portal_cli
from portal.models import ApiToken, Invite, Membership, SiteCredential, TokenKind, User
from tests.portal.factories import API, PASSWORD

RACERS = 12


def _race(base_url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body to /sites/enrol at the same moment, one thread and one connection each."""
    barrier = threading.Barrier(len(bodies))

    def enrol(body: dict) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=120) as http:
            http.get(f"{API}/keys/release-signing")  # open the connection before the start line
            barrier.wait()
            return http.post(f"{API}/sites/enrol", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(enrol, bodies))


def _export_keys(base_url: str, federation_id: int, token: str, out: Path, tmp_path: Path, monkeypatch) -> list[Path]:
    """What `sangsaeng portal site-keys --out` writes, run through its real command."""
    monkeypatch.setattr("portal.cli.TOKEN_FILE", tmp_path / "no-token-file")
    result = CliRunner().invoke(
        portal_cli,
        ["site-keys", "--federation", str(federation_id), "--out", str(out), "--portal", base_url, "--token", token],
    )
    assert result.exit_code == 0, result.output
    return sorted(out.iterdir())


def test_twelve_concurrent_enrolments_with_one_invite_enrol_one_site(portal, live_server, tmp_path, monkeypatch):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    invite = portal.invite(anchor, fid, "Race Forge", "race-line-1")
    bodies = [portal.enrol_body(invite["token"])[0] for _ in range(RACERS)]

    responses = _race(live_server, bodies)

    codes = sorted(r.status_code for r in responses)
    winners = [(body, r) for body, r in zip(bodies, responses, strict=True) if r.is_success]
    assert len(winners) == 1, f"expected exactly one enrolment to succeed, got status codes {codes}"
    body, won = winners[0]
    assert won.status_code == 201
    for response in responses:
        if response is won:
            continue
        assert response.status_code in (409, 410), f"{response.status_code}: {response.text}"
        # A loser that reads the invite after the winner committed meets the membership's own check first.
        detail = response.json()["detail"]
        assert "already been used" in detail or "is already enrolled" in detail, response.text

    with portal.session() as session:
        credentials = session.exec(select(SiteCredential)).all()
        client_tokens = session.exec(select(ApiToken).where(ApiToken.kind == TokenKind.client)).all()
        membership = session.get(Membership, invite["membership"]["id"])
        invite_row = session.exec(select(Invite)).one()
    assert [c.public_key for c in credentials] == [body["public_key"]]
    assert len(client_tokens) == 1 and client_tokens[0].membership_id == membership.id
    assert membership.status == "enrolled" and invite_row.used_at is not None
    assert won.json()["membership"]["key_fingerprint"] == credentials[0].fingerprint

    # The one client token works; after approval, site-keys exports exactly the one key.
    site = {"Authorization": f"Bearer {won.json()['client_token']}"}
    assert portal.client.get(f"{API}/sites/me", headers=site).status_code == 200
    approved = portal.client.post(f"{API}/memberships/{membership.id}/approve", headers=anchor.headers)
    assert approved.status_code == 200, approved.text
    assert approved.json()["key_fingerprint"] == credentials[0].fingerprint
    files = _export_keys(live_server, fid, anchor.token, tmp_path / "keys", tmp_path, monkeypatch)
    assert [f.name for f in files] == ["race-line-1.pub"]
    assert files[0].read_text(encoding="utf-8").strip() == body["public_key"]


def test_concurrent_enrolments_creating_the_admin_make_one_account(portal, live_server):
    """The same race with `admin_email`: one account, one membership change, no 500."""
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    invite = portal.invite(anchor, fid, "Race Admin Co", "race-admin-1")
    bodies = []
    for n in range(RACERS):
        body = portal.enrol_body(invite["token"])[0]
        bodies.append(body | {"admin_email": f"racer{n}@race.example", "admin_password": PASSWORD})

    responses = _race(live_server, bodies)

    assert sorted(r.status_code for r in responses) == [201] + [409] * (RACERS - 1), [r.text for r in responses]
    with portal.session() as session:
        racers = session.exec(select(User).where(User.email.like("racer%@race.example"))).all()  # type: ignore[attr-defined]
        assert len(racers) == 1
        assert len(session.exec(select(SiteCredential)).all()) == 1


def test_an_invite_used_while_an_enrolment_is_in_flight_is_refused_at_the_write(portal, client):
    """Check-then-write: the invite is read unused, another request consumes it, then this one writes."""
    from portal.services import enrolment

    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    invite = portal.invite(anchor, fid, "Interleave Co", "inter-1")
    first, _ = portal.enrol_body(invite["token"])
    second, _ = portal.enrol_body(invite["token"])
    original = enrolment.parse_site_public_key
    calls = []

    def enrol_the_other_one_first(public_key: str):  # type: ignore[no-untyped-def]
        # Runs after this request has read the invite as unused and before it writes anything.
        if not calls:
            calls.append(public_key)
            assert client.post(f"{API}/sites/enrol", json=second).status_code == 201
        return original(public_key)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(enrolment, "parse_site_public_key", enrol_the_other_one_first)
        late = client.post(f"{API}/sites/enrol", json=first)
    assert late.status_code == 409 and "already been used" in late.json()["detail"], late.text
    with portal.session() as session:
        assert [c.public_key for c in session.exec(select(SiteCredential)).all()] == [second["public_key"]]
        assert len(session.exec(select(ApiToken).where(ApiToken.kind == TokenKind.client)).all()) == 1
