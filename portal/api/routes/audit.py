"""The audit trail of a federation, with its hash-chain check; the release-signing public key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from portal.api.deps import CurrentPrincipal, SessionDep, SignerDep
from portal.api.params import FederationId
from portal.models import AuditEventPublic, AuditTrail, SigningKeyPublic
from portal.services.audit import audit_trail

router = APIRouter(prefix="/federations/{federation_id}/audit", tags=["audit"])
keys_router = APIRouter(prefix="/keys", tags=["keys"])


@router.get("", response_model=AuditTrail)
def read_audit_trail(
    session: SessionDep,
    principal: CurrentPrincipal,
    federation_id: FederationId,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> AuditTrail:
    """Newest first; `chain_intact` is the check of the whole chain (anchor admin and auditors)."""
    events, broken = audit_trail(session, principal, federation_id, limit)
    return AuditTrail(
        events=[AuditEventPublic.model_validate(e, from_attributes=True) for e in events],
        chain_intact=broken is None,
        first_broken_id=broken,
    )


@keys_router.get("/release-signing", response_model=SigningKeyPublic)
def release_signing_key(signer: SignerDep) -> SigningKeyPublic:
    """The portal's Ed25519 public key that signs published releases (public)."""
    return SigningKeyPublic(public_key=signer.public_pem, fingerprint=signer.fingerprint)
