"""Federations, their auditors, invitations, memberships and the admitted site keys."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portal import crud
from portal.access import federation_view, visible_federations
from portal.api.deps import Bearer, CurrentPrincipal, CurrentUser, SessionDep, read_json
from portal.api.params import FederationId
from portal.models import (
    AuditorAssign,
    FederationCreate,
    FederationPublic,
    InviteCreate,
    InviteIssued,
    MembershipPublic,
    Message,
    NetworkSettings,
    SiteKeyPublic,
)
from portal.services import enrolment, federations
from portal.services.memberships import active_site_keys, memberships_public

router = APIRouter(prefix="/federations", tags=["federations"])


@router.get("", response_model=list[FederationPublic])
async def list_federations(request: Request, credentials: Bearer) -> Response:
    """The federations the caller has a part in."""
    return await read_json(request, credentials, list[FederationPublic], visible_federations)


@router.post("", response_model=FederationPublic, status_code=201)
def create_federation(session: SessionDep, principal: CurrentUser, data: FederationCreate) -> object:
    """An anchor admin creates a federation for one of the built-in tasks, with its release threshold."""
    return federations.create_federation(session, principal, data)


@router.get("/{federation_id}", response_model=FederationPublic)
async def read_federation(request: Request, credentials: Bearer, federation_id: FederationId) -> Response:
    """One federation, for anyone with a part in it; for anyone else it is not found."""
    return await read_json(
        request,
        credentials,
        FederationPublic,
        lambda session, principal: federation_view(session, principal, federation_id)[0],
        preload=(None, federation_id),
    )


@router.post("/{federation_id}/auditors", response_model=Message, status_code=201)
def assign_auditor(
    session: SessionDep, principal: CurrentUser, federation_id: FederationId, data: AuditorAssign
) -> Message:
    """An anchor admin lets an auditor organisation (its own or the operator's) read the federation."""
    federations.assign_auditor(session, principal, federation_id, data.organisation_id)
    return Message(message=f"organisation {data.organisation_id} now audits federation {federation_id}")


@router.post("/{federation_id}/invites", response_model=InviteIssued, status_code=201)
def invite_site(
    session: SessionDep, principal: CurrentUser, federation_id: FederationId, data: InviteCreate
) -> InviteIssued:
    """Invite a supplier's site. The token is shown once; it is single-use and expires."""
    token, membership = enrolment.invite_site(session, principal, federation_id, data)
    fingerprint = federation_view(session, principal, federation_id)[0].network_ca_fingerprint
    return InviteIssued(
        membership=crud.membership_public(session, membership),
        token=token,
        expires_at=enrolment.invite_expiry(session, membership.id),  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        organisation_admin_required=enrolment.organisation_admin_required(session, membership),
        network_ca_fingerprint=fingerprint,
        invitation=enrolment.invitation_code(token, fingerprint),
    )


@router.put("/{federation_id}/network", response_model=FederationPublic)
def set_network(
    session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId, data: NetworkSettings
) -> object:
    """The anchor (an admin or its coordinator token) sets the network CA certificate and SuperLink address.

    Enrolment hands both to every site; invitations issued afterwards carry the certificate's
    SHA-256 fingerprint, which the site checks. Refuses a certificate that is not a CA's or is
    not valid now.
    """
    return federations.set_network(session, principal, federation_id, data)


@router.get("/{federation_id}/memberships", response_model=list[MembershipPublic])
async def list_memberships(request: Request, credentials: Bearer, federation_id: FederationId) -> Response:
    """Every site for the anchor; its own organisation's sites for a supplier."""
    return await read_json(
        request,
        credentials,
        list[MembershipPublic],
        lambda session, principal: memberships_public(session, principal, federation_id),
        preload=(None, federation_id),
    )


@router.get("/{federation_id}/site-keys", response_model=list[SiteKeyPublic])
async def list_site_keys(request: Request, credentials: Bearer, federation_id: FederationId) -> Response:
    """Public keys of the sites admitted now, for the SuperLink (`flwr supernode register`)."""
    return await read_json(
        request,
        credentials,
        list[SiteKeyPublic],
        lambda session, principal: active_site_keys(session, principal, federation_id),
        preload=(None, federation_id),
    )
