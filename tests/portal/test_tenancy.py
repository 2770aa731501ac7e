"""Tenant isolation: nothing of another anchor's federation is readable or writable, on SQLite and PostgreSQL.

The first part is generated from the OpenAPI schema: a world of two anchors (A and B), each
with a federation, an approved supplier site, an assigned auditor, coordinator and client
tokens, a DP run with its signed privacy report, a published release and a draft. Every
(method, path) of ``app.openapi()`` is called as each of A's roles (and unauthenticated)
with B's ids in the path, and again with ids that do not exist:

* no 2xx, and the same status and the same text as for the id that does not exist;
* none of B's names, e-mails, run reference, token prefix, key fingerprint or report hash
  in the response;
* for writes, B's rows unchanged.

Routes without path parameters (one's own account, the lists) are called too: none of B's
data may come back, B's rows stay unchanged, and a body that names B's objects by id is
refused. A path parameter or request body this file cannot fill fails the test loudly, so
a new route is never skipped silently: add its parameter to `path_values` or its body to
`BODIES`.

The second part proves each finding of the penetration test on its own.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from portal import crud
from portal.core.config import Settings
from portal.core.db import make_engine, migrate
from portal.main import create_app
from portal.models import Membership, MembershipStatus, OrgKind
from tests.portal.conftest import PG_ADMIN_URL, TABLES, unavailable
from tests.portal.factories import (
    API,
    PASSWORD,
    PortalFactory,
    Tenant,
    bearer,
    network,
    release_body,
    session_token,
    tenant,
)
from tests.portal.test_users_organisations import concurrent_insert_after

MISSING = 2_000_000_000  # a valid id (fits the 32-bit columns) that no row has
ROLES = ("anchor", "supplier", "auditor", "coordinator", "client", "anonymous")
WRITE = {"post", "put", "patch", "delete"}


# -- the world: two anchors' federations on one portal, built once per backend ---------------------------
@dataclass
class World:
    app: FastAPI
    client: TestClient
    portal: PortalFactory
    a: Tenant
    b: Tenant

    def __post_init__(self) -> None:
        self._sessions: dict[str, dict[str, str]] = {}

    def headers(self, role: str) -> dict[str, str]:
        """Credentials of A's `role` (people: a session token, fresh after `signed_out`)."""
        emails = {"anchor": self.a.anchor.email, "supplier": self.a.supplier_email, "auditor": self.a.auditor_email}
        if role in emails:
            if role not in self._sessions:
                self._sessions[role] = bearer(session_token(self.portal, emails[role]))
            return self._sessions[role]
        if role == "coordinator":
            return self.a.coordinator
        if role == "client":
            return self.a.site.headers
        return {}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(f"tenancy-{request.param}")
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        shutil.copy(template, tmp / "portal.db")
        url = f"sqlite:///{tmp / 'portal.db'}"
    else:
        url = request.getfixturevalue("pg_database")
        if url is None:
            unavailable(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    settings = Settings(
        environment="test",
        secret_key="test-secret-key-not-for-production",
        data_dir=tmp / "data",
        database_url=url,
        signing_key_path=request.getfixturevalue("signing_key_path"),
        max_upload_bytes=256 * 1024,
    )
    engine = make_engine(settings.sqlalchemy_url, pool_size=5)
    app = create_app(settings, engine=engine)
    with TestClient(app) as client:
        portal = PortalFactory(app, client, tmp)
        yield World(app, client, portal, tenant(portal, "Alpha"), tenant(portal, "Bravo"))
    engine.dispose()
    if request.param == "postgresql":
        cleanup = create_engine(url)
        with cleanup.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        cleanup.dispose()


def snapshot(world: World, t: Tenant) -> dict[str, list[Any]]:
    """Every row that belongs to tenant `t`, as plain values."""
    orgs = ",".join(map(str, t.org_ids))
    queries = {
        "organisation": f"SELECT * FROM organisation WHERE id IN ({orgs}) ORDER BY id",
        "user_account": f"SELECT * FROM user_account WHERE organisation_id IN ({orgs}) ORDER BY id",
        "federation": f"SELECT * FROM federation WHERE id = {t.fid}",
        "auditor_assignment": f"SELECT * FROM auditor_assignment WHERE federation_id = {t.fid} ORDER BY id",
        "membership": f"SELECT * FROM membership WHERE federation_id = {t.fid} ORDER BY id",
        "api_token": f"SELECT id, revoked_at, expires_at FROM api_token WHERE federation_id = {t.fid} OR user_id IN "
        f"(SELECT id FROM user_account WHERE organisation_id IN ({orgs})) ORDER BY id",
        "site_credential": "SELECT id, revoked_at, not_after FROM site_credential WHERE membership_id IN "
        f"(SELECT id FROM membership WHERE federation_id = {t.fid}) ORDER BY id",
        "invite": "SELECT id, used_at FROM invite WHERE membership_id IN "
        f"(SELECT id FROM membership WHERE federation_id = {t.fid}) ORDER BY id",
        "training_run": f"SELECT * FROM training_run WHERE federation_id = {t.fid} ORDER BY id",
        "privacy_report": "SELECT id, sha256 FROM privacy_report WHERE run_id IN "
        f"(SELECT id FROM training_run WHERE federation_id = {t.fid}) ORDER BY id",
        "model_release": f"SELECT * FROM model_release WHERE federation_id = {t.fid} ORDER BY id",
        "contribution_run": f"SELECT * FROM contribution_run WHERE federation_id = {t.fid} ORDER BY id",
        "contribution_score": f"SELECT * FROM contribution_score WHERE federation_id = {t.fid} ORDER BY id",
        "audit_event": f"SELECT id, hash FROM audit_event WHERE federation_id = {t.fid} ORDER BY id",
    }
    with world.app.state.engine.connect() as conn:
        return {table: [tuple(map(str, row)) for row in conn.execute(text(sql))] for table, sql in queries.items()}


# -- filling a route from the schema ------------------------------------------------------------------
def path_values(name: str, schema: dict[str, Any], t: Tenant | None) -> list[Any]:
    """The values to try for path parameter `name`: `t`'s object, or an id nobody has (t=None)."""
    ids: dict[str, Callable[[Tenant], int]] = {
        "federation_id": lambda t: t.fid,
        "membership_id": lambda t: t.site.membership_id,
        "run_id": lambda t: t.run["id"],
        "release_id": lambda t: t.release["id"],
        "token_id": lambda t: t.coordinator_token_id,
    }
    if name in ids:
        return [ids[name](t) if t is not None else MISSING]
    if "enum" in schema:  # e.g. the membership action: try every one
        return list(schema["enum"])
    pytest.fail(
        f"path parameter '{name}' ({schema}) cannot be filled: teach tests/portal/test_tenancy.py::path_values "
        "which object of the other tenant it names, so the new route is covered"
    )


# Request bodies, by the schema name in the OpenAPI document; `b` is the other tenant, whose ids the
# bodies name where a field takes an id (each returned body is tried).
BODIES: dict[str, Callable[[Tenant], list[dict[str, Any]]]] = {
    "Body_login_access_token_api_v1_login_access_token_post": lambda b: [
        {"username": b.anchor.email, "password": "not the password"}
    ],
    "UserUpdate": lambda b: [{"full_name": "Tenancy Probe"}],
    "UserCreate": lambda b: [
        {"email": f"probe-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "organisation_id": org}
        for org in b.org_ids
    ],
    "OrganisationCreate": lambda b: [{"name": f"Probe Org {uuid.uuid4().hex[:8]}", "kind": "auditor"}],
    "FederationCreate": lambda b: [
        {"name": f"Probe Federation {uuid.uuid4().hex[:8]}", "task_name": "predictive-maintenance"}
    ],
    "AuditorAssign": lambda b: [{"organisation_id": b.auditor_org_id}],
    "InviteCreate": lambda b: [{"organisation_name": "Probe Supplier", "site_name": "probe-line"}],
    "TransitionRequest": lambda b: [{"reason": "tenancy probe"}],
    "RunInterrupt": lambda b: [{"reason": "tenancy probe"}],
    "EnrolRequest": lambda b: [{"invite_token": "ssi_forged", "public_key": "ssh-ed25519 AAAA", "proof": "AAAA"}],
    "TokenCreate": lambda b: [{"name": "probe"}],
    "RunReport": lambda b: [
        {"run_ref": "probe-run", "sites": ["probe-line"]},
        # Reopen or overwrite the other tenant's run under its own run_ref (a running run takes updates).
        {"run_ref": b.run["run_ref"], "status": "running", "sites": [b.site.site_name]},
        {"run_ref": b.run["run_ref"], "status": "failed", "sites": [b.site.site_name], "rounds": [{"round": 9}]},
    ],
    "PrivacyReportUpload": lambda b: [{"report_b64": "e30=", "signature_b64": "AAAA", "public_key_pem": "probe"}],
    "ReleaseCreate": lambda b: [release_body(b.run["id"], "9.9.9")],
    "WithdrawRequest": lambda b: [{"reason": "tenancy probe"}],
    "CoordinatorKeyRegister": lambda b: [{"public_key_pem": _probe_key_pem()}],
    "PrivacyPolicyUpdate": lambda b: [{"dp_max_epsilon": 100.0}, {"dp_max_epsilon": None}],
    "NetworkSettings": lambda b: [{"ca_cert_pem": _probe_ca_pem(), "superlink_address": "mallory.example:9092"}],
    "ContributionPolicyUpdate": lambda b: [{"min_share": 0.9, "basis": "data_share"}, {"min_share": None}],
}


def _probe_ca_pem() -> str:
    """A valid network CA certificate: an attacker's attempt to point the other tenant's sites at its own network."""
    import tempfile

    from coordinator.pki import NetworkCerts, init_network

    with tempfile.TemporaryDirectory() as tmp:
        certs = NetworkCerts(Path(tmp))
        init_network(certs, name="Mallory", hosts=["127.0.0.1"])
        return certs.ca_cert.read_text(encoding="ascii")


def _probe_key_pem() -> str:
    """A fresh Ed25519 public key: an attacker's attempt to pin or rotate the other tenant's coordinator key."""
    from sangsaeng.signing import generate_private_key, public_pem

    return public_pem(generate_private_key()).decode()


# Body fields that name an object by id: a body with one of the other tenant's must be refused.
ID_FIELDS = {"organisation_id", "run_id"}


def body_kind(operation: dict[str, Any]) -> tuple[str | None, str | None]:
    """(content type, schema name) of an operation's request body; (None, None) if it takes none."""
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        return None, None
    media, spec = next(iter(content.items()))
    schema = spec["schema"]
    ref = schema.get("$ref") or next((s["$ref"] for s in schema.get("anyOf", []) if "$ref" in s), None)
    if ref is None:
        pytest.fail(f"request body {schema} has no schema name: name it, and add an example to BODIES")
    return media, ref.rsplit("/", 1)[-1]


@dataclass
class Probe:
    method: str
    path: str
    path_params: list[tuple[str, dict[str, Any]]]
    media: str | None
    schema: str | None


def probes(app: FastAPI) -> list[Probe]:
    """Every (method, path) of the OpenAPI schema."""
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            params = [(p["name"], p["schema"]) for p in operation.get("parameters", []) if p["in"] == "path"]
            media, schema = body_kind(operation)
            if schema is not None and schema not in BODIES:
                pytest.fail(f"{method.upper()} {path}: no example body for schema '{schema}': add one to BODIES")
            found.append(Probe(method, path, params, media, schema))
    return found


def fill(probe: Probe, t: Tenant | None) -> list[tuple[str, dict[str, str]]]:
    """(url, {param: value as text}) for each combination of the path parameters."""
    combos: list[dict[str, str]] = [{}]
    for name, schema in probe.path_params:
        combos = [{**c, name: str(v)} for c in combos for v in path_values(name, schema, t)]
    urls = []
    for combo in combos:
        url = probe.path
        for name, value in combo.items():
            url = url.replace("{" + name + "}", value)
        urls.append((url, combo))
    return urls


def call(world: World, role: str, probe: Probe, url: str, body: dict[str, Any] | None) -> Any:
    headers = world.headers(role)
    if probe.media == "application/x-www-form-urlencoded":
        response = world.client.request(probe.method, url, headers=headers, data=body)
    else:
        response = world.client.request(probe.method, url, headers=headers, json=body)
    if url.endswith("/logout"):  # the probe may have ended the session it used
        world._sessions.pop(role, None)
    return response


def leaked(response: Any, b: Tenant) -> list[str]:
    body = response.content.decode("utf-8", errors="replace")
    return [name for name in b.names if name in body]


def masked(response: Any, ids: dict[str, str]) -> str:
    """The response text with the ids of the path replaced by their parameter's name."""
    body = response.content.decode("utf-8", errors="replace")
    for name, value in ids.items():
        if value.isdigit():
            body = re.sub(rf"\b{value}\b", f"<{name}>", body)
    return body


@pytest.mark.parametrize("role", ROLES)
def test_no_route_reads_or_writes_the_other_tenant(world: World, role: str) -> None:
    a, b = world.a, world.b
    before = snapshot(world, b)
    problems: list[str] = []
    checked = 0
    for probe in probes(world.app):
        bodies: list[dict[str, Any] | None] = BODIES[probe.schema](b) if probe.schema else [None]
        for body in bodies:
            names_b = body is not None and any(k in ID_FIELDS for k in body)
            if probe.path_params:
                targets = list(zip(fill(probe, b), fill(probe, None), strict=True))
                if names_b:  # B's ids in the body, A's own ids in the path
                    targets += [(own, None) for own in fill(probe, a)]
            else:
                targets = [((probe.path, {}), None)]
            for (url, ids), missing in targets:
                label = f"{role}: {probe.method.upper()} {url} body={json.dumps(body)[:120] if body else None}"
                response = call(world, role, probe, url, body)
                checked += 1
                must_refuse = bool(probe.path_params and missing is not None) or names_b
                if must_refuse and response.status_code < 300:
                    problems.append(f"{label}: {response.status_code} (must be refused)")
                if leak := leaked(response, b):
                    problems.append(f"{label}: the response holds B's {leak}")
                if missing is not None:
                    other = call(world, role, probe, missing[0], body)
                    if (response.status_code, masked(response, ids)) != (other.status_code, masked(other, missing[1])):
                        problems.append(
                            f"{label}: {response.status_code} {response.text[:200]!r} differs from the answer for "
                            f"an id that does not exist: {other.status_code} {other.text[:200]!r}"
                        )
                if probe.method in WRITE and snapshot(world, b) != before:
                    problems.append(f"{label}: changed B's rows")
                    before = snapshot(world, b)
    assert checked > 40, f"only {checked} calls: did the schema lose its routes?"
    assert not problems, "\n".join(problems)


def web_pages() -> list[str]:
    """Every web page (a GET of the web router) that names an object in its path."""
    from fastapi.routing import APIRoute

    from portal.web.routes import router

    return [r.path for r in router.routes if isinstance(r, APIRoute) and "GET" in r.methods and "{" in r.path]


@pytest.mark.parametrize("role", ("anchor", "supplier", "auditor"))
def test_no_web_page_shows_the_other_tenant(world: World, role: str) -> None:
    """Each page and CSV download, signed in as A's `role` with B's ids: read exactly like a missing id."""
    from portal.api.deps import SESSION_COOKIE

    token = world.headers(role)["Authorization"].removeprefix("Bearer ")
    cookie = {"Cookie": f"{SESSION_COOKIE}={token}"}
    pages = web_pages()
    assert "/federations/{federation_id}/contributions" in pages and "/releases/{release_id}/contributions" in pages
    problems = []
    for path in pages:
        names = re.findall(r"{(\w+)}", path)
        theirs, absent = path, path
        ids: dict[str, str] = {}
        missing_ids: dict[str, str] = {}
        for name in names:
            ids[name] = str(path_values(name, {}, world.b)[0])
            missing_ids[name] = str(path_values(name, {}, None)[0])
            theirs = theirs.replace("{" + name + "}", ids[name])
            absent = absent.replace("{" + name + "}", missing_ids[name])
        response = world.client.get(theirs, headers=cookie, follow_redirects=False)
        other = world.client.get(absent, headers=cookie, follow_redirects=False)
        if response.status_code < 300:
            problems.append(f"{role}: GET {theirs}: {response.status_code} (must be refused)")
        if leak := leaked(response, world.b):
            problems.append(f"{role}: GET {theirs}: the page holds B's {leak}")
        if (response.status_code, masked(response, ids)) != (other.status_code, masked(other, missing_ids)):
            problems.append(
                f"{role}: GET {theirs}: {response.status_code} differs from a missing id's {other.status_code}"
            )
    assert not problems, "\n".join(problems)


def test_every_path_parameter_and_body_of_the_schema_can_be_filled(world: World) -> None:
    """A route this file cannot fill must fail loudly (here, and in the test above), never be skipped."""
    for probe in probes(world.app):
        fill(probe, world.b)
    with pytest.raises(pytest.fail.Exception, match="path parameter 'widget_id'"):
        path_values("widget_id", {"type": "integer"}, world.b)


# -- finding 1: an anchor creates accounts only in its own organisations ------------------------------
def _two_anchors(portal: PortalFactory) -> tuple[Any, Any]:
    return network(portal), network(portal)


def test_anchor_cannot_create_accounts_in_another_anchors_organisations(portal, client):
    mine, theirs = _two_anchors(portal)
    missing = client.post(
        f"{API}/users",
        headers=mine.anchor.headers,
        json={"email": "x@example.com", "password": PASSWORD, "organisation_id": MISSING},
    )
    assert missing.status_code == 404
    for org_id in (theirs.anchor.org_id, theirs.supplier_a.org_id, theirs.auditor.org_id):
        body = {"email": f"mallory{org_id}@example.com", "password": PASSWORD, "organisation_id": org_id}
        response = client.post(f"{API}/users", headers=mine.anchor.headers, json=body)
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == f"organisation {org_id} not found"
    with portal.session() as session:
        assert all(crud.get_user_by_email(session, f"mallory{o}@example.com") is None for o in theirs_ids(theirs))


def theirs_ids(net: Any) -> list[int]:
    return [net.anchor.org_id, net.supplier_a.org_id, net.auditor.org_id]


def test_supplier_accounts_come_from_enrolment_not_from_the_anchor(portal, client):
    net = network(portal)
    body = {"email": "fake-admin@example.com", "password": PASSWORD, "organisation_id": net.supplier_a.org_id}
    response = client.post(f"{API}/users", headers=net.anchor.headers, json=body)
    assert response.status_code == 403
    assert response.json()["detail"] == (
        f"accounts of supplier '{net.site_a.org_name}' come from enrolment (the site's admin_email), not from an anchor"
    )


def test_anchor_creates_accounts_in_its_own_and_its_auditor_organisations(portal, client):
    anchor = portal.anchor()
    auditors = client.post(f"{API}/organisations", headers=anchor.headers, json={"name": "KR Audit", "kind": "auditor"})
    assert auditors.status_code == 201
    for org_id, role in ((anchor.org_id, "anchor"), (auditors.json()["id"], "auditor")):
        body = {"email": f"staff{org_id}@example.com", "password": PASSWORD, "organisation_id": org_id}
        created = client.post(f"{API}/users", headers=anchor.headers, json=body)
        assert created.status_code == 201 and created.json()["role"] == role, created.text
    # An auditor organisation it did not create (the operator's, assigned to its federation) stays closed.
    net = network(portal)
    body = {"email": "extra@example.com", "password": PASSWORD, "organisation_id": net.auditor.org_id}
    refused = client.post(f"{API}/users", headers=net.anchor.headers, json=body)
    assert refused.status_code == 403 and "auditor organisations it created" in refused.json()["detail"]


def test_anchor_cannot_create_anchor_organisations(portal, client):
    anchor = portal.anchor()
    response = client.post(f"{API}/organisations", headers=anchor.headers, json={"name": "Fake", "kind": "anchor"})
    assert response.status_code == 403
    assert "cannot create anchor organisations" in response.json()["detail"]


def test_anchor_cannot_assign_another_anchors_auditor_organisation(portal, client):
    mine, other = portal.anchor(), portal.anchor()
    federation = portal.federation(mine)
    theirs = client.post(f"{API}/organisations", headers=other.headers, json={"name": "B Audit", "kind": "auditor"})
    response = client.post(
        f"{API}/federations/{federation['id']}/auditors",
        headers=mine.headers,
        json={"organisation_id": theirs.json()["id"]},
    )
    assert response.status_code == 404
    assert response.json()["detail"] == f"organisation {theirs.json()['id']} not found"


# -- finding 6: suspended and revoked access ends at once ---------------------------------------------
def test_suspended_site_token_is_refused_until_reinstated(portal, client):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"])
    portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    reads = ("/sites/me", f"/federations/{net.fid}/runs", f"/federations/{net.fid}/releases", f"/runs/{run['id']}")
    assert all(client.get(f"{API}{p}", headers=net.site_a.headers).status_code == 200 for p in reads)
    suspend = client.post(f"{API}/memberships/{net.site_a.membership_id}/suspend", headers=net.anchor.headers)
    assert suspend.status_code == 200
    for path in reads:
        response = client.get(f"{API}{path}", headers=net.site_a.headers)
        assert response.status_code == 403, path
        assert response.json()["detail"] == (
            "site 'alpha-line-1' is suspended: its tokens work again once the anchor reinstates it"
        )
    # Its supplier admin still sees the federation, and the suspension.
    mine = client.get(f"{API}/federations/{net.fid}/memberships", headers=net.supplier_a.headers)
    assert [m["status"] for m in mine.json()] == ["suspended"]
    assert client.post(f"{API}/memberships/{net.site_a.membership_id}/reinstate", headers=net.anchor.headers).is_success
    assert all(client.get(f"{API}{p}", headers=net.site_a.headers).status_code == 200 for p in reads)


def test_revoked_supplier_admin_loses_the_federation_at_once(portal, client):
    net = network(portal)
    h = net.supplier_a.headers
    assert [f["id"] for f in client.get(f"{API}/federations", headers=h).json()] == [net.fid]
    revoke = client.post(f"{API}/memberships/{net.site_a.membership_id}/revoke", headers=net.anchor.headers)
    assert revoke.status_code == 200
    assert client.get(f"{API}/federations", headers=h).json() == []
    for path in (
        f"/federations/{net.fid}",
        f"/federations/{net.fid}/memberships",
        f"/federations/{net.fid}/runs",
        f"/federations/{net.fid}/releases",
        f"/federations/{net.fid}/privacy",
        f"/memberships/{net.site_a.membership_id}",
    ):
        response = client.get(f"{API}{path}", headers=h)
        assert response.status_code == 404, path
    assert client.get(f"{API}/federations/{net.fid}", headers=h).json()["detail"] == f"federation {net.fid} not found"
    # The site's own token died with the membership.
    assert client.get(f"{API}/sites/me", headers=net.site_a.headers).status_code == 401


# -- finding 10: uniform errors, the organisation list, look-alike names, password change ---------------
def test_other_tenants_objects_read_exactly_like_missing_ones(portal, client):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"])
    release = portal.candidate(net.coordinator, net.fid, run["id"])
    stranger = portal.anchor()
    tokens = client.get(f"{API}/federations/{net.fid}/tokens", headers=net.anchor.headers).json()
    for template, real in (
        ("/memberships/{}", net.site_a.membership_id),
        ("/runs/{}", run["id"]),
        ("/runs/{}/privacy-report", run["id"]),
        ("/releases/{}", release["id"]),
        ("/tokens/{}/revoke", tokens[0]["id"]),
    ):
        method = "POST" if template.endswith("revoke") else "GET"
        theirs = client.request(method, f"{API}{template.format(real)}", headers=stranger.headers)
        absent = client.request(method, f"{API}{template.format(MISSING)}", headers=stranger.headers)
        assert theirs.status_code == absent.status_code == 404, template
        assert theirs.json()["detail"] == absent.json()["detail"].replace(str(MISSING), str(real)), template
        assert f"federation {net.fid}" not in theirs.text


def test_organisation_list_holds_only_organisations_sharing_a_federation(portal, client):
    mine, theirs = _two_anchors(portal)
    lonely = client.post(f"{API}/organisations", headers=mine.anchor.headers, json={"name": "Mine", "kind": "auditor"})
    listed = {o["id"] for o in client.get(f"{API}/organisations", headers=mine.anchor.headers).json()}
    expected = {mine.anchor.org_id, mine.supplier_a.org_id, mine.supplier_b.org_id, mine.auditor.org_id}
    assert listed == expected | {lonely.json()["id"]}
    assert not listed & set(theirs_ids(theirs))
    for person in (mine.supplier_a, mine.auditor):
        assert [o["id"] for o in client.get(f"{API}/organisations", headers=person.headers).json()] == [person.org_id]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Hanbit Castings", "HANBIT CASTINGS"),
        ("Hanbit Castings", "Ｈａｎｂｉｔ　Ｃａｓｔｉｎｇｓ"),
        ("Straße Co", "STRASSE co"),
    ],
)
def test_lookalike_organisation_names_are_refused(portal, client, first, second):
    anchor = portal.anchor()
    assert client.post(
        f"{API}/organisations", headers=anchor.headers, json={"name": first, "kind": "auditor"}
    ).is_success
    again = client.post(f"{API}/organisations", headers=anchor.headers, json={"name": second, "kind": "auditor"})
    assert again.status_code == 409
    assert again.json()["detail"] == f"an organisation named '{second}' already exists (as '{first}')"


def test_lookalike_organisation_name_of_another_tenant_is_not_named(portal, client):
    mine, other = portal.anchor(), portal.anchor()
    client.post(f"{API}/organisations", headers=other.headers, json={"name": "Secret Audit", "kind": "auditor"})
    again = client.post(f"{API}/organisations", headers=mine.headers, json={"name": "SECRET audit", "kind": "auditor"})
    assert again.status_code == 409
    assert again.json()["detail"] == "an organisation named 'SECRET audit' already exists"


def test_lookalike_site_names_in_one_federation_are_refused(portal, client):
    anchor = portal.anchor()
    fid = portal.federation(anchor)["id"]
    portal.invite(anchor, fid, "Hanbit", "Line-1")
    again = client.post(
        f"{API}/federations/{fid}/invites",
        headers=anchor.headers,
        json={"organisation_name": "Hanbit", "site_name": "ＬＩＮＥ－１"},
    )
    assert again.status_code == 409
    assert again.json()["detail"] == f"site name 'ＬＩＮＥ－１' is already used in federation {fid}"
    # Another federation may use the name.
    portal.invite(anchor, portal.federation(anchor)["id"], "Hanbit", "line-1")


def test_the_database_refuses_lookalike_names_under_concurrency(portal, client, app):
    """Two requests racing past the check: the unique index on the folded name refuses the second."""
    anchor = portal.anchor()

    def insert(other: Session) -> None:
        crud.create_org(other, "daehan  FORGING", OrgKind.supplier)

    body = {"name": "Daehan Forging", "kind": "supplier"}
    with concurrent_insert_after(app.state.engine, "organisation.name_key =", insert) as fired:
        response = client.post(f"{API}/organisations", headers=anchor.headers, json=body)
    assert fired and response.status_code == 409, response.text
    assert response.json()["detail"] == "an organisation named 'Daehan Forging' already exists"
    fid = portal.federation(anchor)["id"]
    org_id = portal.invite(anchor, fid, "Hanbit", "press-1")["membership"]["organisation_id"]
    with portal.session() as session, pytest.raises(IntegrityError):
        session.add(
            Membership(federation_id=fid, organisation_id=org_id, site_name="PRESS-1", status=MembershipStatus.invited)
        )
        session.commit()


def test_password_change_needs_the_current_password_and_ends_other_sessions(portal, client):
    anchor = portal.anchor()
    other = session_token(portal, anchor.email)
    no_current = client.patch(f"{API}/users/me", headers=anchor.headers, json={"password": "a new long password"})
    assert no_current.status_code == 400
    assert no_current.json()["detail"] == "give current_password to change the password"
    wrong = client.patch(
        f"{API}/users/me",
        headers=anchor.headers,
        json={"password": "a new long password", "current_password": "guess guess"},
    )
    assert wrong.status_code == 403 and wrong.json()["detail"] == "current password is incorrect"
    assert client.get(f"{API}/users/me", headers=bearer(other)).status_code == 200  # nothing changed yet
    changed = client.patch(
        f"{API}/users/me",
        headers=anchor.headers,
        json={"password": "a new long password", "current_password": PASSWORD},
    )
    assert changed.status_code == 200, changed.text
    assert client.get(f"{API}/users/me", headers=anchor.headers).status_code == 200  # this session stays
    ended = client.get(f"{API}/users/me", headers=bearer(other))
    assert ended.status_code == 401 and ended.json()["detail"] == "token has been revoked"
    login = client.post(f"{API}/login/access-token", data={"username": anchor.email, "password": "a new long password"})
    assert login.status_code == 200
    renamed = client.patch(f"{API}/users/me", headers=anchor.headers, json={"full_name": "Kim"})
    assert renamed.status_code == 200  # a name change alone needs no password


def test_wrong_current_passwords_hit_the_sign_in_rate_limit(portal, client, settings):
    anchor = portal.anchor()
    body = {"password": "a new long password", "current_password": "guess guess"}
    codes = [
        client.patch(f"{API}/users/me", headers=anchor.headers, json=body).status_code
        for _ in range(settings.login_max_failures + 1)
    ]
    assert codes[:-1] == [403] * settings.login_max_failures and codes[-1] == 429


# -- the migration backfills the folded names and refuses existing clashes --------------------------------
@pytest.fixture
def empty_database(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[str]:
    """A fresh, unmigrated database of the backend `db_url` runs on."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"sangsaeng_migration_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _seed_0002(url: str, names: list[str], sites: list[str]) -> None:
    migrate(url, "0002")
    engine = create_engine(url)
    now = "2026-01-01 00:00:00+00:00"
    with engine.begin() as conn:
        for name in names:
            conn.execute(
                text("INSERT INTO organisation (name, kind, created_at) VALUES (:n, 'supplier', :t)"),
                {"n": name, "t": now},
            )
        conn.execute(text("UPDATE organisation SET kind = 'anchor' WHERE name = :n"), {"n": names[0]})
        conn.execute(text("UPDATE organisation SET kind = 'auditor' WHERE name = :n"), {"n": names[-1]})
        anchor = conn.execute(text("SELECT id FROM organisation WHERE name = :n"), {"n": names[0]}).scalar_one()
        conn.execute(
            text(
                "INSERT INTO federation (name, task_name, description, anchor_org_id, metric, threshold, "
                "higher_is_better, task_spec, created_at) VALUES ('F', 't', '', :a, 'm', 0, true, '{}', :t)"
            ),
            {"a": anchor, "t": now},
        )
        auditor = conn.execute(text("SELECT id FROM organisation WHERE name = :n"), {"n": names[-1]}).scalar_one()
        conn.execute(
            text("INSERT INTO auditor_assignment (federation_id, organisation_id, created_at) VALUES (1, :o, :t)"),
            {"o": auditor, "t": now},
        )
        for site in sites:
            conn.execute(
                text(
                    "INSERT INTO membership (federation_id, organisation_id, site_name, status, created_at, "
                    "updated_at) VALUES (1, :o, :s, 'active', :t, :t)"
                ),
                {"o": anchor, "s": site, "t": now},
            )
    engine.dispose()


def test_migration_backfills_folded_names_and_auditor_owners(empty_database):
    _seed_0002(empty_database, ["Anchor Motors", "Hanbit", "KR Audit"], ["line-1", "line-2"])
    migrate(empty_database)
    engine = make_engine(empty_database)
    with Session(engine) as session:
        hanbit = crud.get_org_by_name(session, "ＨＡＮＢＩＴ")
        assert hanbit is not None and hanbit.name == "Hanbit"
        auditor = crud.get_org_by_name(session, "kr audit")
        anchor = crud.get_org_by_name(session, "anchor motors")
        assert auditor is not None and anchor is not None and auditor.owner_org_id == anchor.id
        session.add(Membership(federation_id=1, organisation_id=anchor.id, site_name="LINE-1", status="invited"))
        with pytest.raises(IntegrityError):
            session.commit()
    engine.dispose()


def test_migration_stops_naming_existing_lookalike_names(empty_database):
    _seed_0002(empty_database, ["Anchor Motors", "Hanbit", "HANBIT", "KR Audit"], ["line-1", "Line-1"])
    with pytest.raises(RuntimeError) as caught:
        migrate(empty_database)
    message = str(caught.value)
    assert "organisations 'Hanbit' / 'HANBIT'" in message
    assert "sites of federation 1: 'line-1' / 'Line-1'" in message
