"""Role boundaries: every role sees only what it may, and nobody but the anchor changes anything."""

from __future__ import annotations

import pytest

from tests.portal.factories import API, network, release_body

DP = {
    "alpha-line-1": {"epsilon": 2.0, "budget_epsilon": 8.0, "epsilon_by_round": [1.0, 1.5, 2.0]},
    "beta-line-1": {"epsilon": 3.0, "budget_epsilon": 8.0, "epsilon_by_round": [1.2, 2.1, 3.0]},
}


@pytest.fixture
def net(portal):
    return network(portal)


def test_supplier_sees_only_its_own_membership(portal, client, net):
    mine = client.get(f"{API}/federations/{net.fid}/memberships", headers=net.supplier_a.headers)
    assert mine.status_code == 200 and [m["site_name"] for m in mine.json()] == ["alpha-line-1"]
    other = client.get(f"{API}/memberships/{net.site_b.membership_id}", headers=net.supplier_a.headers)
    assert other.status_code == 404
    own = client.get(f"{API}/memberships/{net.site_a.membership_id}", headers=net.supplier_a.headers)
    assert own.status_code == 200
    everyone = client.get(f"{API}/federations/{net.fid}/memberships", headers=net.anchor.headers).json()
    assert {m["site_name"] for m in everyone} == {"alpha-line-1", "beta-line-1"}
    site = client.get(f"{API}/federations/{net.fid}/memberships", headers=net.site_a.headers).json()
    assert [m["site_name"] for m in site] == ["alpha-line-1"]


def test_privacy_spend_and_metrics_are_filtered_per_supplier(portal, client, net):
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], privacy=DP)
    for who, expected in (
        (net.supplier_a, {"alpha-line-1"}),
        (net.site_b, {"beta-line-1"}),
        (net.anchor, {"alpha-line-1", "beta-line-1"}),
        (net.auditor, {"alpha-line-1", "beta-line-1"}),
    ):
        privacy = client.get(f"{API}/federations/{net.fid}/privacy", headers=who.headers)
        assert privacy.status_code == 200, privacy.text
        assert {p["site"] for p in privacy.json()} == expected
    seen = client.get(f"{API}/runs/{run['id']}", headers=net.supplier_a.headers).json()
    assert set(seen["privacy"]) == {"alpha-line-1"}
    assert all(set(r["per_site"]) == {"alpha-line-1"} for r in seen["rounds"])
    assert seen["sites"] == ["alpha-line-1"]
    full = client.get(f"{API}/runs/{run['id']}", headers=net.anchor.headers).json()
    assert set(full["privacy"]) == {"alpha-line-1", "beta-line-1"}
    # A run a supplier did not take part in is invisible to it.
    solo = portal.run(net.coordinator, net.fid, ["beta-line-1"])
    assert client.get(f"{API}/runs/{solo['id']}", headers=net.supplier_a.headers).status_code == 404
    listed = client.get(f"{API}/federations/{net.fid}/runs", headers=net.supplier_a.headers).json()
    assert [r["id"] for r in listed] == [run["id"]]
    assert client.get(f"{API}/federations/{net.fid}/runs", headers=net.auditor.headers).status_code == 403


def test_auditor_reads_but_cannot_change_anything(portal, client, net):
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], privacy=DP)
    draft = portal.candidate(net.coordinator, net.fid, run["id"])
    h = net.auditor.headers
    for path in (
        f"/federations/{net.fid}/privacy",
        f"/federations/{net.fid}/audit",
        f"/federations/{net.fid}/releases",
        f"/releases/{draft['id']}",
        f"/federations/{net.fid}/site-keys",
        "/keys/release-signing",
    ):
        assert client.get(f"{API}{path}", headers=h).status_code == 200, path
    writes = [
        ("POST", f"/memberships/{net.site_a.membership_id}/revoke", None),
        ("POST", f"/memberships/{net.site_a.membership_id}/suspend", None),
        ("POST", f"/releases/{draft['id']}/approve", None),
        ("POST", f"/releases/{draft['id']}/publish", None),
        ("POST", f"/releases/{draft['id']}/withdraw", {"reason": "x"}),
        ("POST", f"/federations/{net.fid}/invites", {"organisation_name": "Evil", "site_name": "evil"}),
        ("POST", f"/federations/{net.fid}/tokens", {"name": "t"}),
        ("POST", f"/federations/{net.fid}/auditors", {"organisation_id": net.auditor.org_id}),
        ("POST", f"/federations/{net.fid}/runs", {"run_ref": "r", "sites": ["alpha-line-1"]}),
        ("POST", f"/federations/{net.fid}/releases", release_body(run["id"], "9.9.9")),
        ("POST", "/federations", {"name": "Audit fed", "task_name": "predictive-maintenance"}),
        ("POST", "/organisations", {"name": "X", "kind": "supplier"}),
        ("POST", "/users", {"email": "x@y.zz", "password": "12345678", "organisation_id": net.auditor.org_id}),
    ]
    for method, path, body in writes:
        response = client.request(method, f"{API}{path}", headers=h, json=body)
        assert response.status_code == 403, (path, response.status_code, response.text)
        assert "read-only" in response.json()["detail"], path
    assert client.get(f"{API}/federations/{net.fid}/memberships", headers=h).status_code == 403
    assert client.get(f"{API}/releases/{draft['id']}", headers=net.anchor.headers).json()["status"] == "draft"


def test_unrelated_callers_get_404(portal, client, net):
    stranger_anchor = portal.anchor()
    stranger_auditor = portal.person("auditor")
    other_fed = portal.federation(stranger_anchor)
    other_site = portal.site(stranger_anchor, other_fed["id"], "Gamma", "gamma-1")
    for who in (stranger_anchor.headers, stranger_auditor.headers, other_site.headers):
        for path in (
            f"/federations/{net.fid}",
            f"/federations/{net.fid}/releases",
            f"/federations/{net.fid}/privacy",
            f"/memberships/{net.site_a.membership_id}",
        ):
            assert client.get(f"{API}{path}", headers=who).status_code == 404, path
    # Each sees only its own federations.
    assert [f["id"] for f in client.get(f"{API}/federations", headers=net.supplier_a.headers).json()] == [net.fid]
    assert [f["id"] for f in client.get(f"{API}/federations", headers=other_site.headers).json()] == [other_fed["id"]]
    assert client.get(f"{API}/federations", headers=stranger_auditor.headers).json() == []


def test_suppliers_and_machines_cannot_act_as_the_anchor(portal, client, net):
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"])
    draft = portal.candidate(net.coordinator, net.fid, run["id"])
    for who in (net.supplier_a.headers, net.site_a.headers, net.coordinator):
        for path in (f"/memberships/{net.site_b.membership_id}/revoke", f"/releases/{draft['id']}/approve"):
            assert client.post(f"{API}{path}", headers=who).status_code in (403, 404), path
    # Sites cannot report runs or upload models; the anchor's own users cannot either (coordinator tokens only).
    for who in (net.site_a.headers, net.supplier_a.headers, net.anchor.headers):
        r = client.post(
            f"{API}/federations/{net.fid}/runs", headers=who, json={"run_ref": "x", "sites": ["alpha-line-1"]}
        )
        assert r.status_code == 403
    other_anchor = portal.anchor()
    coordinator_on_other = portal.coordinator(other_anchor, portal.federation(other_anchor)["id"])
    refused = client.post(
        f"{API}/federations/{net.fid}/runs",
        headers=coordinator_on_other,
        json={"run_ref": "x", "sites": ["alpha-line-1"]},
    )
    assert refused.status_code == 404
    # The supplier cannot see the draft release or download it.
    assert client.get(f"{API}/releases/{draft['id']}", headers=net.supplier_a.headers).status_code == 404
    assert client.get(f"{API}/releases/{draft['id']}/artifact", headers=net.site_a.headers).status_code == 404
    assert client.get(f"{API}/federations/{net.fid}/releases", headers=net.site_a.headers).json() == []
    assert client.get(f"{API}/federations/{net.fid}/site-keys", headers=net.supplier_a.headers).status_code == 403


def test_coordinator_token_revocation(portal, client, net):
    tokens = client.get(f"{API}/federations/{net.fid}/tokens", headers=net.anchor.headers).json()
    coord = [t for t in tokens if t["kind"] == "coordinator"][0]
    assert "token" not in coord
    assert client.post(f"{API}/tokens/{coord['id']}/revoke", headers=net.anchor.headers).status_code == 200
    response = client.get(f"{API}/federations/{net.fid}/site-keys", headers=net.coordinator)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert client.post(f"{API}/tokens/{coord['id']}/revoke", headers=net.anchor.headers).status_code == 409
