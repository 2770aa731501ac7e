"""Organisations: anchors, suppliers and auditors."""

from __future__ import annotations

from fastapi import APIRouter

from portal.api.deps import CurrentUser, SessionDep
from portal.models import Organisation, OrganisationCreate, OrganisationPublic
from portal.services import organisations

router = APIRouter(prefix="/organisations", tags=["organisations"])


@router.get("", response_model=list[OrganisationPublic])
def list_organisations(session: SessionDep, principal: CurrentUser) -> list[Organisation]:
    """All organisations for an anchor admin; one's own for everyone else."""
    return organisations.organisations_of(session, principal)


@router.post("", response_model=OrganisationPublic, status_code=201)
def create_organisation(session: SessionDep, principal: CurrentUser, data: OrganisationCreate) -> Organisation:
    """An anchor admin creates an organisation (names are unique: a taken one is a 409)."""
    return organisations.create_organisation(session, principal, data)
