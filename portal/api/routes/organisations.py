"""Organisations: anchors, suppliers and auditors."""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import col, select

from portal import audit, crud
from portal.access import require
from portal.api.deps import CurrentUser, SessionDep
from portal.core.errors import Conflict
from portal.models import Organisation, OrganisationCreate, OrganisationPublic

router = APIRouter(prefix="/organisations", tags=["organisations"])


@router.get("", response_model=list[OrganisationPublic])
def list_organisations(session: SessionDep, principal: CurrentUser) -> list[Organisation]:
    """All organisations for an anchor admin; one's own for everyone else."""
    if principal.kind == "anchor":
        return list(session.exec(select(Organisation).order_by(col(Organisation.id))))
    return [principal.org]  # type: ignore[list-item]


@router.post("", response_model=OrganisationPublic, status_code=201)
def create_organisation(session: SessionDep, principal: CurrentUser, data: OrganisationCreate) -> Organisation:
    require(principal.kind, ("anchor",), "create organisations")
    if crud.get_org_by_name(session, data.name) is not None:
        raise Conflict(f"an organisation named '{data.name}' already exists")
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
