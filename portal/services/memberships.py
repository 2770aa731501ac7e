"""The membership lifecycle (approve, reject, suspend, reinstate, revoke) and the admitted site keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from portal import audit, crud
from portal.access import READ_ONLY, Principal, Role, federation_view, own_sites, require
from portal.core.errors import BadRequest, Conflict, Forbidden, NotFound
from portal.models import (
    ApiToken,
    Invite,
    Membership,
    MembershipPublic,
    MembershipStatus,
    Organisation,
    SiteCredential,
    SiteKeyPublic,
    as_utc,
    utcnow,
)
from portal.services._db import commit

__all__ = [
    "TRANSITIONS",
    "ADMITTED",
    "get_membership",
    "transition_membership",
    "memberships_of",
    "memberships_public",
    "active_site_keys",
]

S = MembershipStatus
# action -> (allowed source states, target state)
TRANSITIONS: dict[str, tuple[tuple[MembershipStatus, ...], MembershipStatus]] = {
    "approve": ((S.enrolled,), S.approved),
    "reject": ((S.enrolled,), S.rejected),
    "suspend": ((S.approved, S.active), S.suspended),
    "reinstate": ((S.suspended,), S.active),
    "revoke": ((S.invited, S.enrolled, S.approved, S.active, S.suspended), S.revoked),
}
ADMITTED = (S.approved, S.active)

# The read routes' queries, built once (see `portal.access`: building one costs more than running it).
_NEWEST_KEY = (  # the fingerprint of the membership's newest credential, revoked or not (`crud.current_credential`)
    select(SiteCredential.fingerprint)
    .where(col(SiteCredential.membership_id) == col(Membership.id))
    .order_by(col(SiteCredential.id).desc())
    .limit(1)
    .scalar_subquery()
)
_MEMBERSHIP_ROWS = select(Membership).where(col(Membership.federation_id) == bindparam("federation_id"))
_MEMBERSHIPS_PUBLIC_ALL = (
    select(Membership, Organisation.name, _NEWEST_KEY)
    .outerjoin(Organisation, col(Organisation.id) == col(Membership.organisation_id))
    .where(col(Membership.federation_id) == bindparam("federation_id"))
)


def _by_role(query: Any) -> dict[str, Any]:
    """`query` narrowed to the memberships each kind of caller sees (`_visible_memberships`), ordered by id."""
    return {
        "all": query.order_by(col(Membership.id)),
        "supplier": query.where(col(Membership.organisation_id) == bindparam("org_id")).order_by(col(Membership.id)),
        "client": query.where(col(Membership.id) == bindparam("membership_id")).order_by(col(Membership.id)),
    }


_MEMBERSHIPS = _by_role(_MEMBERSHIP_ROWS)
_MEMBERSHIPS_PUBLIC = _by_role(_MEMBERSHIPS_PUBLIC_ALL)
_SITE_KEYS = (
    select(Membership, SiteCredential)
    .join(SiteCredential, col(SiteCredential.membership_id) == col(Membership.id))
    .where(
        col(Membership.federation_id) == bindparam("federation_id"),
        col(Membership.status).in_([s.value for s in ADMITTED]),
        col(SiteCredential.revoked_at).is_(None),
    )
    .order_by(col(Membership.id))
)


def get_membership(session: Session, principal: Principal, membership_id: int) -> tuple[Membership, Role]:
    """A membership and the caller's role in its federation; auditors are refused, other sites' are not found."""
    membership = session.get(Membership, membership_id)
    missing = NotFound(f"membership {membership_id} not found")
    if membership is None:
        raise missing
    _, role = federation_view(session, principal, membership.federation_id, missing=missing)
    if role == "auditor":
        raise Forbidden(f"{READ_ONLY}; they do not see membership details")
    sites = own_sites(session, principal, membership.federation_id)
    if sites is not None and membership.site_name not in sites:
        raise missing
    return membership, role


def transition_membership(
    session: Session, principal: Principal, membership_id: int, action: str, reason: str = ""
) -> Membership:
    """approve / reject / suspend / reinstate / revoke a site."""
    if action not in TRANSITIONS:
        raise BadRequest(f"unknown action '{action}' (choose from {sorted(TRANSITIONS)})")
    membership, role = get_membership(session, principal, membership_id)
    require(role, ("anchor",), f"{action} sites")
    sources, target = TRANSITIONS[action]
    if membership.status not in sources:
        if membership.status == target:
            raise Conflict(f"site '{membership.site_name}' is already {target}")
        hint = " (it has not enrolled yet)" if membership.status == S.invited else ""
        raise Conflict(f"cannot {action} site '{membership.site_name}': it is {membership.status}{hint}")
    now = utcnow()
    previous = membership.status
    membership.status = target
    membership.updated_at = now
    session.add(membership)
    if target in (S.revoked, S.rejected):
        # The key leaves the admitted list at once; the site's tokens and unused invites die with it.
        for credential in session.exec(select(SiteCredential).where(SiteCredential.membership_id == membership.id)):
            if credential.revoked_at is None:
                credential.revoked_at = now
                session.add(credential)
        for token in session.exec(select(ApiToken).where(ApiToken.membership_id == membership.id)):
            if token.revoked_at is None:
                token.revoked_at = now
                session.add(token)
        for invite in session.exec(select(Invite).where(Invite.membership_id == membership.id)):
            if invite.used_at is None:
                invite.used_at = now
                session.add(invite)
    audit.record(
        session,
        actor=principal.label,
        action=f"membership.{target}",
        target=f"membership {membership.id}",
        federation_id=membership.federation_id,
        detail={"site": membership.site_name, "from": previous, "to": target, "reason": reason[:500]},
    )
    commit(session, "membership")
    return membership


def _visible_memberships(
    session: Session, principal: Principal, federation_id: int
) -> tuple[str, dict[str, int | None]]:
    """Which memberships the caller sees, as a key of `_by_role` and its parameters: all for anchor and coordinator,
    its own for others; auditors refused."""
    _, role = federation_view(session, principal, federation_id)
    if role == "auditor":
        raise Forbidden(f"{READ_ONLY}; they do not see membership details")
    if role == "supplier":
        return "supplier", {"federation_id": federation_id, "org_id": principal.org_id}
    if role == "client":
        return "client", {"federation_id": federation_id, "membership_id": principal.site.id}
    return "all", {"federation_id": federation_id}


def memberships_of(session: Session, principal: Principal, federation_id: int) -> list[Membership]:
    """A federation's memberships: all for anchor and coordinator, its own for a supplier or site; auditors refused."""
    seen, params = _visible_memberships(session, principal, federation_id)
    return list(session.exec(_MEMBERSHIPS[seen], params=params).all())


def memberships_public(session: Session, principal: Principal, federation_id: int) -> list[MembershipPublic]:
    """`memberships_of` as the API shows them, with organisation names and current key fingerprints, in one query."""
    seen, params = _visible_memberships(session, principal, federation_id)
    rows = session.exec(_MEMBERSHIPS_PUBLIC[seen], params=params).all()
    return [
        crud.membership_public(session, m, {m.organisation_id: org_name or "?"}, {m.id: fingerprint})
        for m, org_name, fingerprint in rows
    ]


def active_site_keys(session: Session, principal: Principal, federation_id: int) -> list[SiteKeyPublic]:
    """Public keys of the sites admitted now (approved or active, key valid and not revoked)."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "coordinator", "auditor"), "list site keys")
    now = utcnow()
    rows = session.exec(_SITE_KEYS, params={"federation_id": federation_id}).all()
    return [
        SiteKeyPublic(
            membership_id=m.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
            site_name=m.site_name,
            algorithm=c.algorithm,
            public_key=c.public_key,
            fingerprint=c.fingerprint,
            not_after=c.not_after,
        )
        for m, c in rows
        if as_utc(c.not_before) <= now < as_utc(c.not_after)
    ]
