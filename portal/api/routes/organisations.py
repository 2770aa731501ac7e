"""Organisations: anchors, suppliers and auditors."""

from __future__ import annotations

from fastapi import APIRouter

from portal.api.deps import CurrentUser, SessionDep
from portal.models import Organisation, OrganisationCreate, OrganisationPublic
from portal.services import organisations

router = APIRouter(prefix="/organisations", tags=["organisations"])


@router.get("", response_model=list[OrganisationPublic])
def list_organisations(session: SessionDep, principal: CurrentUser) -> list[Organisation]:
    """The organisations the caller shares a federation with; for an anchor also those it created."""
    return organisations.organisations_of(session, principal)


@router.post("", response_model=OrganisationPublic, status_code=201)
def create_organisation(session: SessionDep, principal: CurrentUser, data: OrganisationCreate) -> Organisation:
    """An anchor admin creates a supplier or auditor organisation, which it owns.

    Names are unique after Unicode NFKC, case folding and collapsed spaces: a taken one is a 409.
    """
    return organisations.create_organisation(session, principal, data)
