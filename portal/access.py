"""Who is calling, and what they may see and do. Every route and page goes through here.

Roles: an anchor admin (user of an anchor organisation) runs the federations of its
organisation; a supplier admin sees its own organisation's memberships and data; an auditor
reads the privacy reports, audit trail and model cards of the federations it is assigned
to; a coordinator token acts for one federation; a client token for one site (membership).
A federation the caller has no part in is reported as not found, in the same words as one
that does not exist; so is any object in it (pass the object's own `NotFound` as `missing`).

A supplier organisation takes part in a federation through its live memberships: a revoked
or rejected site gives its organisation no access. A suspended site's client token is refused
until the anchor reinstates the site; its supplier admins still see the federation (and the
suspension).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlmodel import Session, col, select

from portal import audit
from portal.core.errors import Forbidden, NotFound, Unauthorized
from portal.core.security import token_digest
from portal.models import (
    ApiToken,
    AuditorAssignment,
    Federation,
    Membership,
    MembershipStatus,
    Organisation,
    OrgKind,
    TokenKind,
    User,
    as_utc,
    utcnow,
)

__all__ = [
    "Role",
    "Principal",
    "authenticate",
    "federation_view",
    "require",
    "visible_federations",
    "own_sites",
    "READ_ONLY",
    "LIVE",
]

Role = Literal["anchor", "supplier", "auditor", "coordinator", "client"]
READ_ONLY = "auditors have read-only access"
# A site whose client token works.
_SITE_OK = (MembershipStatus.enrolled, MembershipStatus.approved, MembershipStatus.active)
# Memberships through which a supplier organisation takes part in a federation.
LIVE = (*_SITE_OK, MembershipStatus.invited, MembershipStatus.suspended)
_LIVE_VALUES = [s.value for s in LIVE]


@dataclass
class Principal:
    """The authenticated caller."""

    token: ApiToken
    user: User | None = None
    org: Organisation | None = None
    membership: Membership | None = None

    @property
    def kind(self) -> Role:
        """The caller's role: coordinator or client for a machine token, else its organisation's kind."""
        if self.token.kind == TokenKind.coordinator:
            return "coordinator"
        if self.token.kind == TokenKind.client:
            return "client"
        assert self.org is not None
        return OrgKind(self.org.kind).value

    @property
    def org_id(self) -> int:
        """The caller's organisation id; only user principals (anchor, supplier, auditor) have one."""
        assert self.org is not None and self.org.id is not None, "a token principal has no organisation"
        return self.org.id

    @property
    def site(self) -> Membership:
        """The membership a client token acts for; only client principals have one."""
        assert self.membership is not None, "only a client token acts for a site"
        return self.membership

    @property
    def label(self) -> str:
        """How the caller is named in the audit trail."""
        if self.user is not None and self.org is not None:
            return f"{self.user.email} ({self.org.kind}: {self.org.name})"
        if self.membership is not None:
            return f"site {self.membership.site_name} (membership {self.membership.id})"
        return f"coordinator token {self.token.prefix} (federation {self.token.federation_id})"


def authenticate(session: Session, raw_token: str | None) -> Principal:
    """The principal behind a bearer token; raises `Unauthorized` with the reason."""
    if not raw_token:
        raise Unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    # One query: the token with its user and organisation (session) or its membership (client).
    row = session.exec(
        select(ApiToken, User, Organisation, Membership)
        .outerjoin(User, col(User.id) == col(ApiToken.user_id))
        .outerjoin(Organisation, col(Organisation.id) == col(User.organisation_id))
        .outerjoin(Membership, col(Membership.id) == col(ApiToken.membership_id))
        .where(ApiToken.token_hash == token_digest(raw_token))
    ).first()
    if row is None:
        raise Unauthorized("invalid token")
    token, user, org, membership = row
    if token.revoked_at is not None:
        raise Unauthorized("token has been revoked")
    if as_utc(token.expires_at) <= utcnow():
        raise Unauthorized("token has expired")
    if token.kind == TokenKind.session:
        if user is None or not user.is_active:
            raise Unauthorized("user is inactive")
        return Principal(token=token, user=user, org=org)
    if token.kind == TokenKind.client:
        if membership is not None and membership.status == MembershipStatus.suspended:
            raise Forbidden(
                f"site '{membership.site_name}' is suspended: its tokens work again once the anchor reinstates it"
            )
        if membership is None or membership.status not in _SITE_OK:
            raise Unauthorized("site credential is no longer valid")
        if membership.status == MembershipStatus.approved:
            # The site's first contact after approval makes it active.
            membership.status = MembershipStatus.active
            membership.updated_at = utcnow()
            session.add(membership)
            audit.record(
                session,
                actor=f"site {membership.site_name} (membership {membership.id})",
                action="membership.activated",
                target=f"membership {membership.id}",
                federation_id=membership.federation_id,
                detail={"site": membership.site_name},
            )
            session.commit()
        return Principal(token=token, membership=membership)
    return Principal(token=token)


def federation_view(
    session: Session, principal: Principal, federation_id: int, *, missing: NotFound | None = None
) -> tuple[Federation, Role]:
    """The federation and the caller's role in it; `NotFound` if the caller has no part in it.

    Looking up an object of the federation (a membership, run, release, token), pass the
    object's own not-found error as `missing`: another tenant's object then reads exactly
    like one that does not exist, and its federation's id is not disclosed.
    """
    federation = session.get(Federation, federation_id)
    missing = missing or NotFound(f"federation {federation_id} not found")
    if federation is None:
        raise missing
    kind = principal.kind
    if kind == "coordinator":
        if principal.token.federation_id != federation.id:
            raise missing
    elif kind == "client":
        if principal.membership is None or principal.membership.federation_id != federation.id:
            raise missing
    elif kind == "anchor":
        if principal.org is None or federation.anchor_org_id != principal.org.id:
            raise missing
    elif kind == "supplier":
        found = session.exec(
            select(Membership.id).where(
                Membership.federation_id == federation.id,
                Membership.organisation_id == principal.org_id,
                col(Membership.status).in_(_LIVE_VALUES),
            )
        ).first()
        if found is None:
            raise missing
    elif kind == "auditor":
        found = session.exec(
            select(AuditorAssignment.id).where(
                AuditorAssignment.federation_id == federation.id,
                AuditorAssignment.organisation_id == principal.org_id,
            )
        ).first()
        if found is None:
            raise missing
    return federation, kind


def require(role: Role, allowed: tuple[Role, ...], action: str) -> None:
    """Refuse `action` unless `role` is one of `allowed`, with a reason naming both."""
    if role in allowed:
        return
    if role == "auditor":
        raise Forbidden(f"{READ_ONLY}: cannot {action}")
    raise Forbidden(f"a {role} cannot {action} (allowed: {', '.join(allowed)})")


def visible_federations(session: Session, principal: Principal) -> list[Federation]:
    """The federations the caller has a part in."""
    kind = principal.kind
    query = select(Federation)
    if kind == "anchor":
        query = query.where(Federation.anchor_org_id == principal.org_id)
    elif kind == "supplier":
        ids = select(Membership.federation_id).where(
            Membership.organisation_id == principal.org_id,
            col(Membership.status).in_(_LIVE_VALUES),
        )
        query = query.where(col(Federation.id).in_(ids))
    elif kind == "auditor":
        ids = select(AuditorAssignment.federation_id).where(AuditorAssignment.organisation_id == principal.org_id)
        query = query.where(col(Federation.id).in_(ids))
    elif kind == "coordinator":
        query = query.where(Federation.id == principal.token.federation_id)
    else:
        query = query.where(Federation.id == principal.site.federation_id)
    return list(session.exec(query.order_by(col(Federation.id))).all())


def own_sites(session: Session, principal: Principal, federation_id: int) -> set[str] | None:
    """The site names whose details the caller may see in a federation; None means all of them."""
    if principal.kind in ("anchor", "auditor", "coordinator"):
        return None
    if principal.kind == "client":
        return {principal.site.site_name}
    names = session.exec(
        select(Membership.site_name).where(
            Membership.federation_id == federation_id,
            Membership.organisation_id == principal.org_id,
            col(Membership.status).in_(_LIVE_VALUES),
        )
    ).all()
    return set(names)
