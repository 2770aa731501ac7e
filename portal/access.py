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
from typing import Any, Literal

from sqlalchemy import Engine, bindparam
from sqlalchemy.orm.attributes import set_committed_value
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

# The queries every request runs, built once with bound parameters. Building a select with joins
# costs more CPU than SQLite spends running it (about 1 ms of the 1.5 ms authentication took);
# a statement built once keeps its memoised cache key, so SQLAlchemy also finds its compiled form
# without walking the construct again.
_BY_TOKEN = (
    select(ApiToken, User, Organisation, Membership)
    .outerjoin(User, col(User.id) == col(ApiToken.user_id))
    .outerjoin(Organisation, col(Organisation.id) == col(User.organisation_id))
    .outerjoin(Membership, col(Membership.id) == col(ApiToken.membership_id))
    .where(col(ApiToken.token_hash) == bindparam("token_hash"))
)


_BY_TOKEN_WITH: dict[type[Any] | None, Any] = {}


def _by_token_with(preload: type[Any] | None) -> Any:
    """`_BY_TOKEN` that also loads, by the bound ``preload_id``, a federation or (`preload` given) an object of a
    federation with its federation; built once per kind."""
    statement = _BY_TOKEN_WITH.get(preload)
    if statement is None:
        if preload is None:
            on = col(Federation.id) == bindparam("preload_id")
            statement = _BY_TOKEN.add_columns(Federation).outerjoin(Federation, on)
        else:
            statement = (
                _BY_TOKEN.add_columns(preload, Federation)
                .outerjoin(preload, preload.id == bindparam("preload_id"))
                .outerjoin(Federation, col(Federation.id) == preload.federation_id)
            )
        _BY_TOKEN_WITH[preload] = statement
    return statement


_SUPPLIER_IN = (
    select(Membership.id)
    .where(
        col(Membership.federation_id) == bindparam("federation_id"),
        col(Membership.organisation_id) == bindparam("org_id"),
        col(Membership.status).in_(_LIVE_VALUES),
    )
    .limit(1)
)
_AUDITOR_OF = (
    select(AuditorAssignment.id)
    .where(
        col(AuditorAssignment.federation_id) == bindparam("federation_id"),
        col(AuditorAssignment.organisation_id) == bindparam("org_id"),
    )
    .limit(1)
)
_ORG_SITES = select(Membership.site_name).where(
    col(Membership.federation_id) == bindparam("federation_id"),
    col(Membership.organisation_id) == bindparam("org_id"),
    col(Membership.status).in_(_LIVE_VALUES),
)
_FEDERATIONS = select(Federation).order_by(col(Federation.id))
_VISIBLE = {
    "anchor": _FEDERATIONS.where(col(Federation.anchor_org_id) == bindparam("org_id")),
    "supplier": _FEDERATIONS.where(
        col(Federation.id).in_(
            select(Membership.federation_id).where(
                col(Membership.organisation_id) == bindparam("org_id"), col(Membership.status).in_(_LIVE_VALUES)
            )
        )
    ),
    "auditor": _FEDERATIONS.where(
        col(Federation.id).in_(
            select(AuditorAssignment.federation_id).where(col(AuditorAssignment.organisation_id) == bindparam("org_id"))
        )
    ),
    "coordinator": _FEDERATIONS.where(col(Federation.id) == bindparam("federation_id")),
    "client": _FEDERATIONS.where(col(Federation.id) == bindparam("federation_id")),
}


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


def authenticate(
    session: Session,
    raw_token: str | None,
    *,
    writer: Engine | None = None,
    preload: tuple[type[Any] | None, int] | None = None,
) -> Principal:
    """The principal behind a bearer token; raises `Unauthorized` with the reason.

    ``preload=(None, federation_id)`` also loads that federation into `session` in the same query,
    and ``preload=(Model, id)`` a `Model` (a table with a ``federation_id``: a run, a release) and
    its federation, so that the route's `federation_view` and ``session.get`` of them find them in the
    session's identity map without another round trip. The rows are read by the same statement as
    the token, so they are as current as the token's; what the caller may see is still decided by
    the route's checks.

    A site's first contact after approval makes it active, a write: in `session`, or, when
    `session` reads in autocommit mode (`portal.api.deps.read_json`), in a transaction of its own
    on `writer`, so that the status change and its audit record commit together.
    """
    if not raw_token:
        raise Unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    # One query: the token with its user and organisation (session) or its membership (client).
    if preload is None:
        row = session.exec(_BY_TOKEN, params={"token_hash": token_digest(raw_token)}).first()
    else:
        statement = _by_token_with(preload[0])
        row = session.exec(statement, params={"token_hash": token_digest(raw_token), "preload_id": preload[1]}).first()
    if row is None:
        raise Unauthorized("invalid token")
    token, user, org, membership = row[:4]
    # The session's identity map holds its objects weakly: keep the preloaded ones alive for the request.
    session.info["preloaded"] = row[4:]
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
            if writer is None:
                _activate(session, membership)
            else:
                with Session(writer, expire_on_commit=False) as tx:
                    site = tx.get(Membership, membership.id)
                    if site is not None and site.status == MembershipStatus.approved:
                        _activate(tx, site)
                # As committed, not as a change: the reading session must not write it again.
                set_committed_value(membership, "status", MembershipStatus.active)
        return Principal(token=token, membership=membership)
    return Principal(token=token)


def _activate(session: Session, membership: Membership) -> None:
    """The site's first contact after approval makes it active (audited as ``membership.activated``)."""
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
        found = session.exec(_SUPPLIER_IN, params={"federation_id": federation.id, "org_id": principal.org_id}).first()
        if found is None:
            raise missing
    elif kind == "auditor":
        found = session.exec(_AUDITOR_OF, params={"federation_id": federation.id, "org_id": principal.org_id}).first()
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
    params: dict[str, int | None]
    if kind in ("anchor", "supplier", "auditor"):
        params = {"org_id": principal.org_id}
    elif kind == "coordinator":
        params = {"federation_id": principal.token.federation_id}
    else:
        params = {"federation_id": principal.site.federation_id}
    return list(session.exec(_VISIBLE[kind], params=params).all())


def own_sites(session: Session, principal: Principal, federation_id: int) -> set[str] | None:
    """The site names whose details the caller may see in a federation; None means all of them."""
    if principal.kind in ("anchor", "auditor", "coordinator"):
        return None
    if principal.kind == "client":
        return {principal.site.site_name}
    names = session.exec(_ORG_SITES, params={"federation_id": federation_id, "org_id": principal.org_id}).all()
    return set(names)
