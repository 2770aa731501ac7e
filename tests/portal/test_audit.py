"""The audit trail: every state change recorded, hash-chained, append-only in the database."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from portal.audit import verify_chain
from portal.models import AuditEvent
from tests.portal.factories import API, network


def test_every_state_change_is_recorded_and_the_chain_holds(portal, client):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"])
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    client.post(f"{API}/releases/{release['id']}/withdraw", headers=net.anchor.headers, json={"reason": "bad"})
    client.post(f"{API}/memberships/{net.site_b.membership_id}/revoke", headers=net.anchor.headers)
    trail = client.get(f"{API}/federations/{net.fid}/audit", headers=net.auditor.headers).json()
    assert trail["chain_intact"] is True
    actions = [e["action"] for e in reversed(trail["events"])]
    for expected in (
        "federation.created",
        "membership.invited",
        "membership.enrolled",
        "membership.approved",
        "auditor.assigned",
        "token.issued",
        "run.reported",
        "release.created",
        "release.approved",
        "release.published",
        "release.withdrawn",
        "membership.revoked",
    ):
        assert expected in actions, expected
    assert (
        actions.index("membership.invited")
        < actions.index("membership.enrolled")
        < actions.index("membership.approved")
    )
    published = next(e for e in trail["events"] if e["action"] == "release.published")
    assert net.anchor.email in published["actor"] and published["detail"]["signature"] == release["signature"]
    events = trail["events"]
    assert all(a["prev_hash"] == b["hash"] for a, b in zip(events, events[1:], strict=False))
    assert client.get(f"{API}/federations/{net.fid}/audit", headers=net.supplier_a.headers).status_code == 403


def test_database_refuses_to_change_or_delete_audit_events(portal):
    network(portal)
    with portal.session() as session:
        for statement in ("UPDATE audit_event SET actor = 'mallory'", "DELETE FROM audit_event"):
            with pytest.raises(DBAPIError, match="append-only"):
                session.exec(text(statement))  # type: ignore[call-overload]
            session.rollback()
        assert session.exec(select(AuditEvent).where(AuditEvent.actor == "mallory")).first() is None


def test_verify_chain_detects_tampering(portal):
    net = network(portal)
    with portal.session() as session:
        events = list(
            session.exec(select(AuditEvent).where(AuditEvent.federation_id == net.fid).order_by(col(AuditEvent.id)))
        )
    assert verify_chain(events) is None
    forged = events[2].model_copy(update={"detail": {**events[2].detail, "site": "someone-else"}})
    assert verify_chain([*events[:2], forged, *events[3:]]) == events[2].id
    assert verify_chain([*events[:1], *events[2:]]) == events[2].id  # a deleted event breaks the link
