"""The audit trail of a federation, with the check of its hash chain."""

from __future__ import annotations

from sqlmodel import Session, col, select

from portal import audit
from portal.access import Principal, federation_view, require
from portal.models import AuditEvent

__all__ = ["audit_trail"]


def audit_trail(
    session: Session, principal: Principal, federation_id: int, limit: int = 500
) -> tuple[list[AuditEvent], int | None]:
    """A federation's audit events (newest first, up to `limit`) and the chain check over all of them."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "auditor"), "read the audit trail")
    events = list(
        session.exec(select(AuditEvent).where(AuditEvent.federation_id == federation_id).order_by(col(AuditEvent.id)))
    )
    broken = audit.verify_chain(events)
    return list(reversed(events))[:limit], broken
