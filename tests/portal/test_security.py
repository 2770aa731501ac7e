"""The attacker's side of the penetration test: CSRF, security headers, Host-built URLs,
production defaults, login limits shared by worker processes, password change.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from portal import crud
from portal.api.deps import SESSION_COOKIE
from portal.core.config import Settings
from portal.core.db import make_engine
from portal.main import create_app
from portal.models import LoginAttempt, OrgKind, utcnow
from tests.portal.factories import API, PASSWORD, network, password_hash
from tests.portal.test_web import csrf_of, sign_in

EVIL = "http://evil.example"
SIBLING = "http://sibling.testserver"  # same site, another origin
OTHER_PORT = "http://testserver:8081"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- finding 5: CSRF ---------------------------------------------------------------------------
def test_the_api_ignores_the_web_session_cookie(portal, client):
    """A same-site page posting a form to the API with the anchor's cookie approves nothing."""
    net = network(portal)
    pending = portal.site(net.anchor, net.fid, "Gamma Cast", "gamma-line-1", approve=False)
    sign_in(client, net.anchor.email)  # the anchor's browser now holds the session cookie
    assert client.cookies.get(SESSION_COOKIE)
    forged = client.post(
        f"{API}/memberships/{pending.membership_id}/approve", headers={**FORM, "Origin": SIBLING}, content=b""
    )
    assert forged.status_code == 401, forged.text
    assert client.get(f"{API}/users/me").status_code == 401  # the cookie alone is no API credential
    membership = client.get(f"{API}/memberships/{pending.membership_id}", headers=net.anchor.headers).json()
    assert membership["status"] == "enrolled"
    assert client.get("/").status_code == 200  # the web pages still take the cookie


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": SIBLING},
        {"Origin": OTHER_PORT},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"},
    ],
    ids=[
        "other-site",
        "sibling-subdomain",
        "other-port",
        "null-origin",
        "fetch-cross-site",
        "fetch-same-site",
        "mixed",
    ],
)
def test_web_login_refuses_cross_site_posts(portal, client, headers):
    anchor = portal.anchor()
    client.cookies.clear()
    response = client.post(
        "/login", data={"email": anchor.email, "password": PASSWORD}, headers=headers, follow_redirects=False
    )
    assert response.status_code == 403 and "did not come from this portal" in response.text
    assert SESSION_COOKIE not in response.cookies


def test_web_login_from_the_portal_itself_signs_in(portal, client, app):
    anchor = portal.anchor()
    for headers in ({"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
        client.cookies.clear()
        response = client.post(
            "/login", data={"email": anchor.email, "password": PASSWORD}, headers=headers, follow_redirects=False
        )
        assert response.status_code == 303 and response.cookies.get(SESSION_COOKIE), headers
    app.state.settings = app.state.settings.model_copy(update={"public_url": "https://portal.anchor.kr"})
    client.cookies.clear()
    behind_proxy = client.post(
        "/login",
        data={"email": anchor.email, "password": PASSWORD},
        headers={"Origin": "https://portal.anchor.kr"},
        follow_redirects=False,
    )
    assert behind_proxy.status_code == 303  # the configured public origin, not the Host header, is ours


def test_web_forms_refuse_cross_site_posts_even_with_a_token(portal, client):
    net = network(portal)
    sign_in(client, net.anchor.email)
    token = csrf_of(client.get(f"/federations/{net.fid}").text)
    forged = client.post(
        f"/memberships/{net.site_a.membership_id}/suspend",
        data={"csrf": token},
        headers={"Sec-Fetch-Site": "same-site"},
    )
    assert forged.status_code == 403
    members = client.get(f"{API}/federations/{net.fid}/memberships", headers=net.anchor.headers).json()
    assert {m["site_name"]: m["status"] for m in members}["alpha-line-1"] == "approved"


def test_csrf_token_is_compared_in_constant_time(portal, client, monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    net = network(portal)
    sign_in(client, net.anchor.email)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    forged = client.post(f"/memberships/{net.site_a.membership_id}/suspend", data={"csrf": "0" * 64})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert any(b"0" * 64 in (a, b) for a, b in calls)  # as bytes: compare_digest refuses non-ASCII str


# -- finding 10: headers, Host, production defaults --------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_response_carries_the_security_headers(portal, client):
    anchor = portal.anchor()
    responses = [
        client.get("/login"),
        client.get("/static/style.css"),
        client.get(f"{API}/users/me"),  # 401
        client.get(f"{API}/users/me", headers=anchor.headers),
        client.post(f"{API}/login/access-token", content=b" " * (2 * 1024 * 1024), headers=FORM),  # 413
        client.get("/no/such/page"),
    ]
    for response in responses:
        headers = response.headers
        assert headers["X-Frame-Options"] == "DENY", response.url
        assert headers["X-Content-Type-Options"] == "nosniff", response.url
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], response.url
        assert "default-src 'self'" in headers["Content-Security-Policy"], response.url
        assert headers["Referrer-Policy"] == "same-origin", response.url
    assert responses[4].status_code == 413


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_host_header_never_builds_the_invite_command(portal, client, app):
    net = network(portal)
    sign_in(client, net.anchor.email)
    token = csrf_of(client.get(f"/federations/{net.fid}").text)
    form = {"csrf": token, "organisation_name": "Delta Co", "site_name": "delta-1"}
    poisoned = client.post(f"/federations/{net.fid}/invite", data=form, headers={"Host": "evil.example"})
    assert poisoned.status_code == 200 and "evil.example" not in poisoned.text
    assert "SANGSAENG_PORTAL_PUBLIC_URL" in poisoned.text  # unset: a placeholder says what to configure
    app.state.settings = app.state.settings.model_copy(update={"public_url": "https://portal.anchor.kr"})
    form |= {"site_name": "delta-2"}
    configured = client.post(f"/federations/{net.fid}/invite", data=form, headers={"Host": "evil.example"})
    assert "--portal https://portal.anchor.kr --invite" in configured.text and "evil.example" not in configured.text


def test_public_url_is_checked(tmp_path):
    assert Settings(data_dir=tmp_path, public_url="https://portal.anchor.kr/").public_url == "https://portal.anchor.kr"
    with pytest.raises(ValueError, match="public_url"):
        Settings(data_dir=tmp_path, public_url="portal.anchor.kr")


def test_production_cookies_are_secure_by_default(tmp_path):
    production = Settings(environment="production", secret_key="a-real-secret-value", data_dir=tmp_path)
    assert production.cookie_secure is True
    assert Settings(data_dir=tmp_path).cookie_secure is False
    explicit = Settings(environment="production", secret_key="a-real-secret-value", cookie_secure=False)
    assert explicit.cookie_secure is False


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_production_web_login_sets_a_secure_cookie(portal, client, app):
    anchor = portal.anchor()
    app.state.settings = app.state.settings.model_copy(update={"cookie_secure": True})
    response = client.post("/login", data={"email": anchor.email, "password": PASSWORD}, follow_redirects=False)
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()


@pytest.fixture
def serve_env(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """`portal serve` with uvicorn replaced by a recorder of the environment it would start in."""
    import os

    serve_sets = ("SANGSAENG_PORTAL_ENVIRONMENT", "SANGSAENG_PORTAL_PUBLIC_URL")
    for name in {*serve_sets, *(n for n in os.environ if n.startswith("SANGSAENG_PORTAL_") or n == "DATABASE_URL")}:
        monkeypatch.setenv(name, "")  # recorded, so whatever serve sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("SANGSAENG_PORTAL_DATA_DIR", str(tmp_path / "data"))
    started: list[dict[str, str]] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(dict(os.environ)))
    return started


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.10.5", "::"])
def test_serve_on_a_public_address_is_production_and_refuses_the_default_secret(serve_env, host):
    from portal.cli import app as portal_cli

    result = CliRunner().invoke(portal_cli, ["serve", "--host", host])
    assert result.exit_code == 2 and "SANGSAENG_PORTAL_SECRET_KEY" in result.output, result.output
    assert serve_env == []  # nothing was served


def test_serve_on_a_public_address_with_a_secret_runs_in_production(serve_env, monkeypatch):
    from portal.cli import app as portal_cli

    monkeypatch.setenv("SANGSAENG_PORTAL_SECRET_KEY", "a-real-secret-value")
    result = CliRunner().invoke(portal_cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert serve_env[0]["SANGSAENG_PORTAL_ENVIRONMENT"] == "production"
    assert "SANGSAENG_PORTAL_PUBLIC_URL" in result.output  # warns: invite pages need the public URL


def test_serve_on_loopback_stays_in_development(serve_env):
    from portal.cli import app as portal_cli

    result = CliRunner().invoke(portal_cli, ["serve", "--host", "127.0.0.1", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert serve_env[0].get("SANGSAENG_PORTAL_ENVIRONMENT", "development") == "development"
    assert serve_env[0]["SANGSAENG_PORTAL_PUBLIC_URL"] == "http://127.0.0.1:8123"


def test_serve_keeps_an_explicit_environment(serve_env, monkeypatch):
    from portal.cli import app as portal_cli

    monkeypatch.setenv("SANGSAENG_PORTAL_ENVIRONMENT", "development")
    result = CliRunner().invoke(portal_cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert serve_env[0]["SANGSAENG_PORTAL_ENVIRONMENT"] == "development"


# -- finding 10: login limits across worker processes --------------------------------------------
def _person(engine) -> str:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        org = crud.create_org(session, f"Anchor {utcnow().timestamp()}", OrgKind.anchor)
        user = crud.create_user(
            session,
            email=f"w{utcnow().timestamp()}@anchor.kr",
            password=PASSWORD,
            organisation_id=org.id,
            hashed=password_hash(PASSWORD),
        )
        session.commit()
        return user.email


@pytest.fixture
def two_workers(settings):  # type: ignore[no-untyped-def]
    """Two portal applications on one database, as two uvicorn worker processes would be."""
    engines = [make_engine(settings.sqlalchemy_url, pool_size=2) for _ in range(2)]
    clients = [TestClient(create_app(settings, engine=engine)) for engine in engines]
    yield clients, engines[0]
    for engine in engines:
        engine.dispose()


def _login(client, email, password):  # type: ignore[no-untyped-def]
    return client.post(f"{API}/login/access-token", data={"username": email, "password": password})


def test_login_limits_hold_across_worker_processes(two_workers):
    (first, second), engine = two_workers
    email = _person(engine)
    for attempt in range(5):  # the guesses are spread over both workers
        assert _login((first, second)[attempt % 2], email, "guess").status_code == 401
    for worker in (first, second):
        blocked = _login(worker, email, PASSWORD)
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1


def test_login_address_limit_holds_across_worker_processes(two_workers, settings):
    (first, second), engine = two_workers
    emails = [_person(engine) for _ in range(2)]
    for attempt in range(settings.login_ip_max_failures):  # many accounts, one address, both workers
        _login((first, second)[attempt % 2], f"nobody{attempt}@x.kr", "guess")
    assert _login(second, emails[1], PASSWORD).status_code == 429


def test_login_failures_expire_and_success_clears_them(two_workers, settings):
    (first, second), engine = two_workers
    email = _person(engine)
    for _ in range(4):
        _login(first, email, "guess")
    assert _login(second, email, PASSWORD).status_code == 200  # the fifth try succeeds: the count is cleared
    for _ in range(5):
        _login(first, email, "guess")
    assert _login(second, email, PASSWORD).status_code == 429
    with Session(engine) as session:  # move every failure past the window
        for row in session.exec(select(LoginAttempt)):
            row.at = utcnow() - timedelta(seconds=settings.login_window_seconds + 1)
            session.add(row)
        session.commit()
    assert _login(first, email, PASSWORD).status_code == 200


# -- password change ---------------------------------------------------------------------------------
