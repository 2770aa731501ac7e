"""Organisations (anchors, suppliers, auditors): who sees which, and the anchor creating them.

An anchor admin sees its own organisation, the organisations it created (`owner_org_id`),
and those taking part in its federations (sites' suppliers, assigned auditors); everyone
else sees only its own organisation. An organisation outside that set reads as not found.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, or_, select

from portal import audit, crud
from portal.access import Principal, require
from portal.core.errors import Conflict, Forbidden, NotFound
from portal.models import AuditorAssignment, Federation, Membership, Organisation, OrganisationCreate, OrgKind
from portal.services._db import conflict_on_clash

__all__ = ["create_organisation", "create_owned", "organisations_of", "visible_organisation"]


def _visible(principal: Principal) -> Any:
    """The WHERE clause selecting the organisations `principal` may see."""
    own = principal.org_id
    if principal.kind != "anchor":
        return Organisation.id == own
    federations = select(Federation.id).where(Federation.anchor_org_id == own)
    sites = select(Membership.organisation_id).where(col(Membership.federation_id).in_(federations))
    auditors = select(AuditorAssignment.organisation_id).where(col(AuditorAssignment.federation_id).in_(federations))
    return or_(
        Organisation.id == own,
        Organisation.owner_org_id == own,
        col(Organisation.id).in_(sites),
        col(Organisation.id).in_(auditors),
    )


def organisations_of(session: Session, principal: Principal) -> list[Organisation]:
    """The organisations the caller shares a federation with (see the module docstring)."""
    return list(session.exec(select(Organisation).where(_visible(principal)).order_by(col(Organisation.id))))


def visible_organisation(session: Session, principal: Principal, organisation_id: int) -> Organisation:
    """The organisation if the caller may see it; otherwise `NotFound`, worded as for an id that does not exist."""
    org = session.exec(select(Organisation).where(Organisation.id == organisation_id, _visible(principal))).first()
    if org is None:
        raise NotFound(f"organisation {organisation_id} not found")
    return org


def create_organisation(session: Session, principal: Principal, data: OrganisationCreate) -> Organisation:
    """An anchor admin creates a supplier or auditor organisation, which it then owns.

    A name already taken, or one that differs only by Unicode compatibility forms, case or
    spacing (now or concurrently), is a 409. Anchor organisations come from the operator
    (``sangsaeng portal create-admin``), not from another anchor.
    """
    require(principal.kind, ("anchor",), "create organisations")
    if data.kind == OrgKind.anchor:
        raise Forbidden("an anchor admin cannot create anchor organisations (the operator runs 'portal create-admin')")
    duplicate = f"an organisation named '{data.name}' already exists"
    existing = crud.get_org_by_name(session, data.name)
    if existing is not None:
        # The existing spelling is named only when the caller may see that organisation.
        if (
            existing.name != data.name
            and session.exec(select(Organisation.id).where(Organisation.id == existing.id, _visible(principal))).first()
        ):
            duplicate += f" (as '{existing.name}')"
        raise Conflict(duplicate)
    with conflict_on_clash(session, duplicate):
        org = create_owned(session, principal, data.name, data.kind)
        session.commit()
    return org


def create_owned(session: Session, principal: Principal, name: str, kind: OrgKind) -> Organisation:
    """A new organisation owned by the calling anchor's organisation (`owner_org_id`), with its audit event.

    Through the API (an auditor organisation) or through an invite by a new supplier name
    (`portal.services.enrolment`); the caller commits.
    """
    org = crud.create_org(session, name, kind)
    org.owner_org_id = principal.org_id
    session.add(org)
    audit.record(
        session,
        actor=principal.label,
        action="organisation.created",
        target=f"organisation {org.id}",
        detail={"name": org.name, "kind": org.kind},
    )
    return org
