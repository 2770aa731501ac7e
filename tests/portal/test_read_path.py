"""The API's fast read path (`portal.api.deps.read_json`): still authenticated and checked on every request.

The hot read routes authenticate, query and serialise in one worker-thread hop (on the event loop on SQLite) and cache
nothing: a revoked token, a deactivated user, a suspended or revoked site is refused on the
very next request. Their query count does not grow with the rows they list (no N+1), they
never hold more database connections than the pool has, and a pooled connection the database
dropped while it sat idle is replaced, not handed to a request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import create_engine, event, text
from sqlmodel import select

from portal.core import db
from portal.core.db import make_engine
from portal.main import create_app
from portal.models import AuditEvent, Membership, MembershipStatus, User
from tests.portal.factories import API, Network, PortalFactory, bearer, network, session_token


def fast_routes(net: Network, run_id: int, release_id: int) -> list[str]:
    """Every route served by `read_json`, for the network's federation."""
    fid = net.fid
    return [
        f"{API}/federations",
        f"{API}/federations/{fid}",
        f"{API}/federations/{fid}/memberships",
        f"{API}/federations/{fid}/site-keys",
        f"{API}/federations/{fid}/releases",
        f"{API}/federations/{fid}/privacy",
        f"{API}/federations/{fid}/runs",
        f"{API}/runs/{run_id}",
        f"{API}/releases/{release_id}",
    ]


def seeded(portal: PortalFactory) -> tuple[Network, int, int]:
    net = network(portal)
    sites = [net.site_a.site_name, net.site_b.site_name]
    privacy = {s: {"epsilon": 1.0, "budget_epsilon": 8.0, "epsilon_by_round": [0.5, 1.0]} for s in sites}
    run = portal.run(net.coordinator, net.fid, sites, privacy=privacy)
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    return net, run["id"], release["id"]


@contextmanager
def counting_queries(engine) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_fast_routes_refuse_a_revoked_session_token_on_the_next_request(portal, client):
    net, run_id, release_id = seeded(portal)
    token = session_token(portal, net.anchor.email)
    for path in fast_routes(net, run_id, release_id):
        assert client.get(path, headers=bearer(token)).status_code == 200, path
    assert client.post(f"{API}/login/logout", headers=bearer(token)).status_code == 200
    for path in fast_routes(net, run_id, release_id):
        refused = client.get(path, headers=bearer(token))
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"], (path, refused.text)
    assert client.get(f"{API}/federations").status_code == 401  # and without a token at all


def test_fast_routes_refuse_a_deactivated_user_on_the_next_request(portal, client):
    net, run_id, release_id = seeded(portal)
    assert client.get(f"{API}/federations/{net.fid}/releases", headers=net.supplier_a.headers).status_code == 200
    with portal.session() as session:
        user = session.query(User).filter(User.email == net.supplier_a.email).one()
        user.is_active = False
        session.commit()
    for path in fast_routes(net, run_id, release_id):
        refused = client.get(path, headers=net.supplier_a.headers)
        assert refused.status_code == 401 and "inactive" in refused.json()["detail"], (path, refused.text)


def test_fast_routes_refuse_a_revoked_coordinator_token_on_the_next_request(portal, client):
    net, run_id, release_id = seeded(portal)
    path = f"{API}/federations/{net.fid}/site-keys"
    assert client.get(path, headers=net.coordinator).status_code == 200
    tokens = client.get(f"{API}/federations/{net.fid}/tokens", headers=net.anchor.headers).json()
    for token in tokens:
        assert client.post(f"{API}/tokens/{token['id']}/revoke", headers=net.anchor.headers).status_code == 200
    for path in fast_routes(net, run_id, release_id):
        refused = client.get(path, headers=net.coordinator)
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"], (path, refused.text)


def test_fast_routes_refuse_a_suspended_then_revoked_site_on_the_next_request(portal, client):
    net, run_id, release_id = seeded(portal)
    site = net.site_a
    assert client.get(f"{API}/federations/{net.fid}/releases", headers=site.headers).status_code == 200
    anchor = net.anchor.headers
    assert client.post(f"{API}/memberships/{site.membership_id}/suspend", headers=anchor).status_code == 200
    for path in fast_routes(net, run_id, release_id):
        refused = client.get(path, headers=site.headers)
        assert refused.status_code == 403 and "suspended" in refused.json()["detail"], (path, refused.text)
    assert client.post(f"{API}/memberships/{site.membership_id}/revoke", headers=anchor).status_code == 200
    for path in fast_routes(net, run_id, release_id):
        assert client.get(path, headers=site.headers).status_code == 401, path
    # The revoked site's organisation no longer takes part: its admin no longer sees the federation.
    gone = client.get(f"{API}/federations/{net.fid}/memberships", headers=net.supplier_a.headers)
    assert gone.status_code == 404


def test_membership_list_is_one_query_and_matches_each_membership(portal, client):
    net, _, _ = seeded(portal)
    path = f"{API}/federations/{net.fid}/memberships"
    with counting_queries(portal.app.state.engine) as two_sites:
        listed = client.get(path, headers=net.anchor.headers)
    assert listed.status_code == 200 and len(listed.json()) == 2
    for name in ("gamma-line-1", "delta-line-1", "eps-line-1"):
        portal.site(net.anchor, net.fid, f"Org {name}", name)
    with counting_queries(portal.app.state.engine) as five_sites:
        listed = client.get(path, headers=net.anchor.headers)
    assert len(listed.json()) == 5
    # token with user, organisation and the federation; memberships with names and fingerprints
    assert len(five_sites) == len(two_sites) == 2, five_sites
    for member in listed.json():
        single = client.get(f"{API}/memberships/{member['id']}", headers=net.anchor.headers).json()
        assert member == single
        assert member["key_fingerprint"].startswith("SHA256:") and member["organisation_name"]
    own = client.get(path, headers=net.supplier_a.headers).json()
    assert [m["site_name"] for m in own] == [net.site_a.site_name]


def test_release_list_for_a_supplier_does_not_query_per_release(portal, client):
    net, run_id, _ = seeded(portal)
    path = f"{API}/federations/{net.fid}/releases"
    with counting_queries(portal.app.state.engine) as one:
        assert len(client.get(path, headers=net.supplier_a.headers).json()) == 1
    for version in ("1.1.0", "1.2.0"):
        portal.published(net.anchor, net.coordinator, net.fid, run_id, version)
    with counting_queries(portal.app.state.engine) as three:
        releases = client.get(path, headers=net.supplier_a.headers).json()
    assert len(releases) == 3 and len(three) == len(one), three
    assert all(set(r["privacy"]) == {net.site_a.site_name} for r in releases)  # its own sites' spend only


def test_concurrent_reads_never_hold_more_connections_than_the_pool(settings, signing_key_path):
    """Forty reads at once through a pool of two: reads wait for a connection, none opens an overflow one."""
    engine = make_engine(settings.sqlalchemy_url, pool_size=2)
    app = create_app(settings, engine=engine)
    held = {"now": 0, "most": 0}
    lock = threading.Lock()

    @event.listens_for(engine, "checkout")
    def _out(*_args) -> None:  # type: ignore[no-untyped-def]
        with lock:
            held["now"] += 1
            held["most"] = max(held["most"], held["now"])

    @event.listens_for(engine, "checkin")
    def _in(*_args) -> None:  # type: ignore[no-untyped-def]
        with lock:
            held["now"] -= 1

    @event.listens_for(engine, "before_cursor_execute")
    def _slow(*_args) -> None:  # type: ignore[no-untyped-def]
        time.sleep(0.005)  # every query takes a while, so the reads overlap

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://portal") as api:
            answers = await asyncio.gather(
                *(api.get(f"{API}/federations", headers=bearer("sss_not-a-token")) for _ in range(40))
            )
        return [a.status_code for a in answers]

    try:
        # A fresh event loop in its own thread: another test in this worker (the browser's) may leave one running here.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            codes = pool.submit(asyncio.run, burst()).result()
        assert codes == [401] * 40  # every one authenticated against the database, and refused
        assert held["most"] <= 2, held
        assert engine.pool.overflow() <= 0, engine.pool.status()  # type: ignore[attr-defined]  # a QueuePool
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(pg_database: str | None) -> str:
    if pg_database is None:
        pytest.skip("PostgreSQL not reachable")
    return pg_database


@pytest.mark.parametrize("idle_ping", [True, False])
def test_a_connection_dropped_while_idle_is_replaced(pg_url, monkeypatch, idle_ping):
    """A pooled connection the server closed is pinged and replaced after `PING_AFTER_IDLE_S`, not before."""
    engine = make_engine(pg_url, pool_size=1)
    admin = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            conn.commit()
        time.sleep(0.2)
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0 if idle_ping else 3600.0)
        if idle_ping:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        else:
            # In steady use there is no ping: the request that meets the dropped connection fails,
            # and the pool, told of the disconnect, reconnects for the next one.
            with pytest.raises(Exception, match="terminat|closed|connection"), engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
        admin.dispose()


def test_a_sites_first_read_after_approval_activates_it_once_and_audited(portal, client):
    """The fast path reads outside a transaction; the activation it may cause still commits, with its audit record."""
    net = network(portal)
    site = portal.site(net.anchor, net.fid, "Org zeta", "zeta-line-1")  # approved, never heard from since
    path = f"{API}/federations/{net.fid}/releases"
    assert client.get(path, headers=site.headers).status_code == 200
    with portal.session() as session:
        status = session.get(Membership, site.membership_id).status  # type: ignore[union-attr]
        activated = session.exec(
            select(AuditEvent).where(
                AuditEvent.action == "membership.activated", AuditEvent.target == f"membership {site.membership_id}"
            )
        ).all()
    assert status == MembershipStatus.active and len(activated) == 1
    # Later reads find it active and record nothing more.
    assert client.get(path, headers=site.headers).status_code == 200
    listed = client.get(f"{API}/federations/{net.fid}/memberships", headers=net.anchor.headers).json()
    assert {m["site_name"]: m["status"] for m in listed}["zeta-line-1"] == "active"
    with portal.session() as session:
        again = session.exec(select(AuditEvent).where(AuditEvent.action == "membership.activated")).all()
    assert [e.target for e in again].count(f"membership {site.membership_id}") == 1


def test_fast_routes_find_their_federation_or_object_in_the_token_query(portal, client):
    """Authentication loads the route's federation (or run, or release, with its federation): one round trip fewer."""
    net, run_id, release_id = seeded(portal)
    for path, expected in (
        (f"{API}/federations/{net.fid}", 1),  # the token, its user and organisation, and the federation
        (f"{API}/runs/{run_id}", 1),  # ... and the run with its federation
        (f"{API}/releases/{release_id}", 1),
        (f"{API}/federations/{net.fid}/releases", 2),  # ... then the releases
    ):
        with counting_queries(portal.app.state.engine) as statements:
            assert client.get(path, headers=net.anchor.headers).status_code == 200, path
        assert len(statements) == expected, (path, statements)
    # Another tenant's run, release and federation still read as missing, in the same words as none at all.
    other = network(portal)
    for path, word in (
        (f"{API}/runs/{run_id}", "run"),
        (f"{API}/releases/{release_id}", "release"),
        (f"{API}/federations/{net.fid}", "federation"),
    ):
        answer = client.get(path, headers=other.anchor.headers)
        assert answer.status_code == 404 and answer.json()["detail"].startswith(word), (path, answer.text)


def test_privacy_spend_of_a_running_run_is_read_afresh_after_each_report(portal, client):
    """The decoded spend is cached by its stored text: a running run's next report shows on the next request."""
    net = network(portal)
    site = net.site_a.site_name
    path = f"{API}/federations/{net.fid}/privacy"
    body = {"run_ref": "live-run", "status": "running", "sites": [site], "rounds": []}
    for epsilon in (1.0, 2.5, 1.0):
        body["privacy"] = {site: {"epsilon": epsilon, "budget_epsilon": 2.0, "epsilon_by_round": [epsilon]}}
        reported = client.post(f"{API}/federations/{net.fid}/runs", headers=net.coordinator, json=body)
        assert reported.status_code == 201, reported.text
        (entry,) = client.get(path, headers=net.anchor.headers).json()
        assert entry["epsilon"] == epsilon and entry["within_budget"] == (epsilon <= 2.0), entry
        assert entry["run_ref"] == "live-run" and entry["epsilon_by_round"] == [epsilon]


def test_hot_routes_go_first_only_where_no_route_they_pass_could_answer_the_same_request():
    from fastapi import APIRouter

    from portal.api.main import HOT, _first, api_router

    assert [r.endpoint.__name__ for r in api_router.routes[: len(HOT)]] == list(HOT)
    router = APIRouter()

    def by_action() -> None: ...

    def listing() -> None: ...

    def other_method() -> None: ...

    router.add_api_route("/things/{thing_id}/{action}", by_action, methods=["GET"])
    router.add_api_route("/things/{thing_id}/list", other_method, methods=["POST"])
    router.add_api_route("/things/{thing_id}/list", listing, methods=["GET"])
    routes = list(router.routes)
    with pytest.raises(ValueError, match="would change which route answers"):
        _first(routes, ("listing",))  # type: ignore[arg-type]
    moved = _first(routes[1:], ("listing",))  # type: ignore[arg-type]  # past a POST only: the same answers
    assert [r.endpoint.__name__ for r in moved] == ["listing", "other_method"]  # type: ignore[attr-defined]
