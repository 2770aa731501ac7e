"""Site enrolment with an invite token, and a site's view of itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from portal import crud
from portal.access import authenticate
from portal.api.deps import CurrentPrincipal, SessionDep, SettingsDep, SignerDep
from portal.core.errors import Forbidden
from portal.models import EnrolRequest, EnrolResponse, Federation, FederationPublic, SiteStatus
from portal.services.enrolment import enrol_site

router = APIRouter(prefix="/sites", tags=["sites"])
# Enrolment is open to anyone holding an invite; a bearer token, when sent, says which signed-in
# admin makes it. Only the header counts, never the web session cookie (no cross-site enrolment).
_optional_bearer = HTTPBearer(
    auto_error=False, description="Optional: the session token of the supplier admin enrolling the site"
)


@router.post("/enrol", response_model=EnrolResponse, status_code=201)
def enrol(
    session: SessionDep,
    settings: SettingsDep,
    signer: SignerDep,
    data: EnrolRequest,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_optional_bearer)],
) -> EnrolResponse:
    """Register the public key a site generated on-site (single-use invite, proof of possession).

    Optionally creates the supplier admin's portal account. Returns the site's client token
    and the portal's release-signing public key, which the site pins to verify releases, and,
    once the anchor set them, the network CA certificate and the SuperLink address (the site
    checks the certificate against the fingerprint its invitation carried).
    An invite into an organisation that existed outside the inviting anchor's control
    (``organisation_admin_required``) is enrolled by a signed-in admin of that organisation,
    with their session token as ``Authorization: Bearer``, and creates no account.
    """
    enroller = authenticate(session, credentials.credentials) if credentials is not None else None
    membership, plain, token = enrol_site(
        session,
        settings,
        invite_token=data.invite_token,
        public_key=data.public_key,
        proof=data.proof,
        admin_email=data.admin_email,
        admin_password=data.admin_password,
        admin_name=data.admin_name,
        enroller=enroller,
        network_ca_fingerprint=data.network_ca_fingerprint,
    )
    federation = session.get(Federation, membership.federation_id)
    return EnrolResponse(
        membership=crud.membership_public(session, membership),
        client_token=plain,
        client_token_expires_at=token.expires_at,
        portal_signing_key=signer.public_pem,
        portal_signing_key_fingerprint=signer.fingerprint,
        network_ca_pem=federation.network_ca_pem if federation else None,
        superlink_address=federation.superlink_address if federation else None,
    )


@router.get("/me", response_model=SiteStatus)
def read_site(session: SessionDep, principal: CurrentPrincipal) -> SiteStatus:
    """The calling site's membership and federation (client tokens)."""
    if principal.membership is None:
        raise Forbidden("this route is for site client tokens")
    federation = session.get(Federation, principal.membership.federation_id)
    return SiteStatus(
        membership=crud.membership_public(session, principal.membership),
        federation=FederationPublic.model_validate(federation, from_attributes=True),
    )
