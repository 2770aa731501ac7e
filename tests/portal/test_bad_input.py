"""SQL-ish strings in every text field: stored verbatim or refused with a 4xx, never a 500."""

from __future__ import annotations

import pytest

from tests.portal.factories import API, network

SQLISH = [
    "'; DROP TABLE membership; --",
    "Robert'); DELETE FROM organisation WHERE ('1'='1",
    '" OR ""="',
    "1 UNION SELECT token_hash FROM api_token",
    "%' OR 1=1 --",
    "x\x00y",
    "가나다' OR '1'='1",
]


@pytest.mark.parametrize("evil", SQLISH)
def test_sqlish_strings_never_cause_a_server_error(portal, client, evil):
    net = network(portal)
    a = net.anchor.headers
    attempts = [
        ("POST", "/federations", a, {"name": evil, "task_name": "predictive-maintenance"}),
        ("POST", "/federations", a, {"name": "ok name", "task_name": evil}),
        ("POST", "/federations", a, {"name": "ok 2", "task_name": "predictive-maintenance", "description": evil}),
        ("POST", "/federations", a, {"name": "ok 3", "task_name": "predictive-maintenance", "metric": evil}),
        ("POST", "/organisations", a, {"name": evil, "kind": "auditor"}),
        ("POST", "/organisations", a, {"name": "ok org", "kind": evil}),
        ("POST", f"/federations/{net.fid}/invites", a, {"organisation_name": evil, "site_name": "s-evil"}),
        ("POST", f"/federations/{net.fid}/invites", a, {"organisation_name": "Evil Org", "site_name": evil}),
        ("POST", f"/federations/{net.fid}/tokens", a, {"name": evil}),
        ("POST", f"/memberships/{net.site_a.membership_id}/suspend", a, {"reason": evil}),
        ("POST", "/users", a, {"email": evil, "password": "long enough", "organisation_id": net.anchor.org_id}),
        ("PATCH", "/users/me", a, {"full_name": evil}),
        ("POST", "/sites/enrol", {}, {"invite_token": evil, "public_key": evil, "proof": evil}),
        ("POST", f"/federations/{net.fid}/runs", net.coordinator, {"run_ref": evil, "sites": ["alpha-line-1"]}),
        ("POST", f"/federations/{net.fid}/runs", net.coordinator, {"run_ref": "r-ok", "sites": [evil]}),
        (
            "POST",
            f"/federations/{net.fid}/runs",
            net.coordinator,
            {"run_ref": "r-ok2", "sites": ["alpha-line-1"], "rounds": [{"round": 1, "metrics": {evil: 0.5}}]},
        ),
    ]
    for method, path, headers, body in attempts:
        response = client.request(method, f"{API}{path}", headers=headers, json=body)
        assert response.status_code < 500, (path, body, response.status_code, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"], path
    login = client.post(f"{API}/login/access-token", data={"username": evil, "password": evil})
    assert login.status_code in (401, 422)
    # Everything stored before is still there and unchanged.
    members = client.get(f"{API}/federations/{net.fid}/memberships", headers=a).json()
    assert {m["site_name"]: m["status"] for m in members}["alpha-line-1"] in ("suspended", "approved")
    assert {m["site_name"] for m in members} >= {"alpha-line-1", "beta-line-1"}
    assert client.get(f"{API}/federations/{net.fid}", headers=a).json()["name"] == net.federation["name"]


@pytest.mark.parametrize(
    "path",
    [
        "/federations/0",
        "/federations/-1",
        "/federations/99999999999999999999",
        "/runs/3000000000",
        "/releases/abc",
        "/memberships/1e9/approve",
    ],
)
def test_out_of_range_ids_get_4xx(portal, client, path):
    anchor = portal.anchor()
    method = "POST" if path.endswith("approve") else "GET"
    assert client.request(method, f"{API}{path}", headers=anchor.headers).status_code in (404, 422)
