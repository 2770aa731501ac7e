"""Web pages through the test client: every page renders for every role and shows only what it may."""

from __future__ import annotations

import re

import pytest

from tests.portal.factories import PASSWORD, network

DP = {
    "alpha-line-1": {"epsilon": 2.0, "budget_epsilon": 8.0, "epsilon_by_round": [1.0, 1.5, 2.0]},
    "beta-line-1": {"epsilon": 3.0, "budget_epsilon": 8.0, "epsilon_by_round": [1.2, 2.1, 3.0]},
}


def sign_in(client, email):
    client.cookies.clear()
    response = client.post("/login", data={"email": email, "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


@pytest.fixture
def world(portal):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], privacy=DP)
    portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    return net, run


def test_anchor_pages_render(portal, client, world):
    net, run = world
    sign_in(client, net.anchor.email)
    for path, needle in (
        (f"/federations/{net.fid}", "beta-line-1"),
        ("/", net.federation["name"]),
        (f"/federations/{net.fid}/runs", run["run_ref"]),
        (f"/runs/{run['id']}", "<svg"),
        (f"/federations/{net.fid}/privacy", "<polyline"),
        (f"/federations/{net.fid}/releases", "Ed25519"),
        (f"/federations/{net.fid}/audit", "hash chain intact"),
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert needle in response.text, path


def test_supplier_sees_only_its_own_things_on_every_page(portal, client, world):
    net, run = world
    sign_in(client, net.supplier_a.email)
    for path in (
        f"/federations/{net.fid}",
        f"/runs/{run['id']}",
        f"/federations/{net.fid}/privacy",
        f"/federations/{net.fid}/releases",
        f"/federations/{net.fid}/runs",
    ):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "alpha-line-1" in page.text or path.endswith("releases"), path
        assert "beta-line-1" not in page.text, path
        assert net.site_b.org_name not in page.text, path
    assert client.get(f"/federations/{net.fid}/audit").status_code == 403
    assert "Approve" not in client.get(f"/federations/{net.fid}").text


def test_auditor_pages_are_read_only(portal, client, world):
    net, _ = world
    sign_in(client, net.auditor.email)
    privacy = client.get(f"/federations/{net.fid}/privacy")
    assert privacy.status_code == 200 and "beta-line-1" in privacy.text
    assert client.get(f"/federations/{net.fid}/audit").status_code == 200
    redirected = client.get(f"/federations/{net.fid}")
    assert redirected.url.path.endswith("/privacy") and "Members</a>" not in redirected.text
    token = csrf_of(privacy.text)
    refused = client.post(f"/memberships/{net.site_a.membership_id}/revoke", data={"csrf": token})
    assert refused.status_code == 403 and "read-only" in refused.text


def test_forms_need_the_csrf_token_and_sign_in(portal, client, world):
    net, _ = world
    client.cookies.clear()
    assert client.get(f"/federations/{net.fid}", follow_redirects=False).headers["location"] == "/login"
    sign_in(client, net.anchor.email)
    forged = client.post(f"/memberships/{net.site_a.membership_id}/suspend", data={"csrf": "0" * 64})
    assert forged.status_code == 403 and "CSRF" in forged.text
    page = client.get(f"/federations/{net.fid}")
    done = client.post(f"/memberships/{net.site_a.membership_id}/suspend", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 200 and "suspended" in done.text
    bad = client.post(
        f"/federations/{net.fid}/invite", data={"csrf": csrf_of(page.text), "organisation_name": "", "site_name": "x"}
    )
    assert bad.status_code == 422


def test_login_page_errors_and_rate_limit(portal, client):
    anchor = portal.anchor()
    wrong = client.post("/login", data={"email": anchor.email, "password": "nope"})
    assert wrong.status_code == 401 and "incorrect e-mail or password" in wrong.text
    for _ in range(5):
        client.post("/login", data={"email": anchor.email, "password": "nope"})
    assert client.post("/login", data={"email": anchor.email, "password": PASSWORD}).status_code == 429
