"""The append-only, hash-chained audit trail.

Each event stores the hash of the previous event of the same federation (the portal-wide
events, such as organisations and users, form their own chain) and its own hash over
``prev_hash`` and its canonical content. Changing or deleting any stored event breaks every
later hash; the database triggers of the initial migration refuse UPDATE and DELETE anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from portal.core.security import canonical_json
from portal.models import AuditEvent, as_utc, utcnow

__all__ = ["GENESIS", "record", "event_hash", "verify_chain"]

GENESIS = "0" * 64


def event_hash(event: AuditEvent) -> str:
    """SHA-256 of `prev_hash` and the canonical JSON of the event's time, actor, federation, action, target, detail."""
    body = {
        "at": as_utc(event.at).replace(tzinfo=None).isoformat(timespec="microseconds"),
        "actor": event.actor,
        "federation_id": event.federation_id,
        "action": event.action,
        "target": event.target,
        "detail": event.detail,
    }
    return hashlib.sha256(event.prev_hash.encode() + canonical_json(body)).hexdigest()


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    federation_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event (flushed, committed with the caller's transaction)."""
    if session.get_bind().dialect.name == "postgresql":
        # Serialise appends to one chain so two concurrent writers never share a prev_hash.
        session.exec(text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=7_000_000 + (federation_id or 0)))  # type: ignore[call-overload]  # exec() is typed for select()
    last = session.exec(
        select(AuditEvent.hash)
        .where(
            AuditEvent.federation_id == federation_id
            if federation_id is not None
            else col(AuditEvent.federation_id).is_(None)
        )
        .order_by(col(AuditEvent.id).desc())
        .limit(1)
    ).first()
    event = AuditEvent(
        at=utcnow(),
        actor=actor[:300],
        federation_id=federation_id,
        action=action,
        target=target[:200],
        detail=detail or {},
        prev_hash=last or GENESIS,
        hash="",
    )
    event.hash = event_hash(event)
    session.add(event)
    session.flush()
    return event


def verify_chain(events: Iterable[AuditEvent]) -> int | None:
    """The id of the first event whose link or hash does not hold, or None if the chain is intact.

    `events` are one chain (one federation's, or the portal-wide one) in id order.
    """
    previous = GENESIS
    for event in events:
        if event.prev_hash != previous or event_hash(event) != event.hash:
            return event.id
        previous = event.hash
    return None
