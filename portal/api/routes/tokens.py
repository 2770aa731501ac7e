"""Machine tokens: the anchor issues and revokes coordinator tokens for a federation."""

from __future__ import annotations

from fastapi import APIRouter

from portal.api.deps import CurrentUser, SessionDep
from portal.api.params import FederationId, TokenId
from portal.models import Federation, TokenCreate, TokenIssued, TokenPublic
from portal.services import tokens

router = APIRouter(prefix="/federations/{federation_id}/tokens", tags=["tokens"])
token_router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", response_model=TokenIssued, status_code=201)
def issue_coordinator_token(
    session: SessionDep, principal: CurrentUser, federation_id: FederationId, data: TokenCreate
) -> TokenIssued:
    """A coordinator token for this federation (shown once).

    With ``coordinator_public_key_pem`` the federation pins that key for its privacy reports
    (if it pins none yet; a different key is refused: rotate it with ``PUT .../coordinator-key``).
    """
    plain, token = tokens.issue_coordinator_token(
        session,
        principal,
        federation_id,
        data.name,
        data.days,
        coordinator_public_key_pem=data.coordinator_public_key_pem,
    )
    federation = session.get(Federation, federation_id)
    return TokenIssued(
        **TokenPublic.model_validate(token, from_attributes=True).model_dump(),
        token=plain,
        coordinator_key_fingerprint=federation.coordinator_key_fingerprint if federation else None,
    )


@router.get("", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, principal: CurrentUser, federation_id: FederationId) -> list:
    """A federation's machine tokens (coordinator and site), never their secrets; anchor admin only."""
    return tokens.tokens_of(session, principal, federation_id)


@token_router.post("/{token_id}/revoke", response_model=TokenPublic)
def revoke_token(session: SessionDep, principal: CurrentUser, token_id: TokenId) -> object:
    """The anchor admin revokes a federation's machine token; a session token is not found, a revoked one a 409."""
    return tokens.revoke_token(session, principal, token_id)
