"""Organisations (anchors, suppliers, auditors): who sees which, and the anchor creating them."""

from __future__ import annotations

from sqlmodel import Session, col, select

from portal import audit, crud
from portal.access import Principal, require
from portal.core.errors import Conflict
from portal.models import Organisation, OrganisationCreate
from portal.services._db import conflict_on_clash

__all__ = ["create_organisation", "organisations_of"]


def organisations_of(session: Session, principal: Principal) -> list[Organisation]:
    """All organisations for an anchor admin; only the caller's own for everyone else."""
    if principal.kind == "anchor":
        return list(session.exec(select(Organisation).order_by(col(Organisation.id))))
    return [principal.org]  # type: ignore[list-item]  # signed-in users (CurrentUser) have an org


def create_organisation(session: Session, principal: Principal, data: OrganisationCreate) -> Organisation:
    """An anchor admin creates an organisation; a name already taken (now or concurrently) is a 409."""
    require(principal.kind, ("anchor",), "create organisations")
    duplicate = f"an organisation named '{data.name}' already exists"
    if crud.get_org_by_name(session, data.name) is not None:
        raise Conflict(duplicate)
    with conflict_on_clash(session, duplicate):
        org = crud.create_org(session, data.name, data.kind)
        audit.record(
            session,
            actor=principal.label,
            action="organisation.created",
            target=f"organisation {org.id}",
            detail={"name": org.name, "kind": org.kind},
        )
        session.commit()
    return org
