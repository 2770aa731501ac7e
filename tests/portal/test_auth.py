"""Sign-in, tokens and settings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from portal import crud
from portal.core.config import Settings
from portal.models import ApiToken, TokenKind, utcnow
from tests.portal.factories import API, PASSWORD


def login(client, email, password):
    return client.post(f"{API}/login/access-token", data={"username": email, "password": password})


def test_login_issues_a_working_token_and_logout_revokes_it(portal, client):
    anchor = portal.anchor()
    response = login(client, anchor.email, PASSWORD)
    assert response.status_code == 200, response.text
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    me = client.get(f"{API}/users/me", headers=headers)
    assert me.status_code == 200 and me.json()["role"] == "anchor" and me.json()["email"] == anchor.email
    assert client.post(f"{API}/login/logout", headers=headers).status_code == 200
    again = client.get(f"{API}/users/me", headers=headers)
    assert again.status_code == 401 and "revoked" in again.json()["detail"]


@pytest.mark.parametrize("email", ["nobody@example.com", "' OR 1=1 --@x.io", "a\x00b@example.com"])
def test_wrong_or_unknown_credentials_get_401(portal, client, email):
    anchor = portal.anchor()
    assert login(client, anchor.email, "wrong password").status_code == 401
    response = login(client, email, PASSWORD)
    assert response.status_code == 401
    assert response.json()["detail"] == "incorrect e-mail or password"


def test_login_is_rate_limited(portal, client):
    anchor = portal.anchor()
    for _ in range(5):
        assert login(client, anchor.email, "guess").status_code == 401
    blocked = login(client, anchor.email, PASSWORD)  # even the right password is refused now
    assert blocked.status_code == 429
    assert "too many failed logins" in blocked.json()["detail"]
    assert int(blocked.headers["Retry-After"]) >= 1
    other = portal.anchor()
    assert login(client, other.email, PASSWORD).status_code == 200  # another account is unaffected


def test_missing_expired_forged_tokens(portal, client):
    assert client.get(f"{API}/users/me").status_code == 401
    assert client.get(f"{API}/users/me", headers={"Authorization": "Bearer forged"}).status_code == 401
    anchor = portal.anchor()
    with portal.session() as session:
        user = crud.get_user_by_email(session, anchor.email)
        plain, token = crud.issue_token(session, TokenKind.session, lifetime=timedelta(seconds=-1), user_id=user.id)
        session.commit()
    response = client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {plain}"})
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_tokens_are_stored_hashed(portal):
    anchor = portal.anchor()
    with portal.session() as session:
        stored = [t.token_hash for t in session.query(ApiToken).all()]
    assert anchor.token not in stored and all(len(h) == 64 for h in stored)


def test_default_secret_refused_outside_development(tmp_path):
    with pytest.raises(ValidationError, match="default"):
        Settings(environment="production", data_dir=tmp_path)
    assert Settings(environment="development", data_dir=tmp_path).secret_key == "changethis"
    default = Settings(environment="development", data_dir=tmp_path, database_url=None)
    assert default.sqlalchemy_url.startswith("sqlite:///") and default.sqlalchemy_url.endswith("portal.db")


def test_users_me_update_and_anchor_creates_users(portal, client):
    anchor = portal.anchor()
    auditor_org = client.post(
        f"{API}/organisations", headers=anchor.headers, json={"name": "Audit KR", "kind": "auditor"}
    )
    assert auditor_org.status_code == 201
    created = client.post(
        f"{API}/users",
        headers=anchor.headers,
        json={"email": "Eve@Audit.kr", "password": "long enough pw", "organisation_id": auditor_org.json()["id"]},
    )
    assert (
        created.status_code == 201 and created.json()["email"] == "eve@audit.kr" and created.json()["role"] == "auditor"
    )
    duplicate = client.post(
        f"{API}/users",
        headers=anchor.headers,
        json={"email": "eve@audit.kr", "password": "long enough pw", "organisation_id": auditor_org.json()["id"]},
    )
    assert duplicate.status_code == 409
    assert login(client, "eve@audit.kr", "long enough pw").status_code == 200
    renamed = client.patch(f"{API}/users/me", headers=anchor.headers, json={"full_name": "Kim Anchor"})
    assert renamed.status_code == 200 and renamed.json()["full_name"] == "Kim Anchor"
    assert utcnow()  # sanity
