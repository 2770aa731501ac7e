"""Machine tokens: the anchor issues, lists and revokes a federation's coordinator tokens."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, select

from portal import audit, crud
from portal.access import Principal, federation_view, require
from portal.core.errors import Conflict, NotFound
from portal.models import ApiToken, TokenKind, utcnow
from portal.services._db import commit
from portal.services.privacy_policy import pin_coordinator_key

__all__ = ["issue_coordinator_token", "revoke_token", "tokens_of"]


def issue_coordinator_token(
    session: Session,
    principal: Principal,
    federation_id: int,
    name: str,
    days: int,
    *,
    coordinator_public_key_pem: str | None = None,
) -> tuple[str, ApiToken]:
    """A coordinator token (plain text shown once); with a public key, the federation pins it first.

    A key other than the one already pinned is refused (`Conflict`): replacing it is a rotation.
    """
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "issue coordinator tokens")
    if coordinator_public_key_pem is not None:
        pin_coordinator_key(session, principal, federation, coordinator_public_key_pem, rotate=False)
    plain, token = crud.issue_token(
        session, TokenKind.coordinator, lifetime=timedelta(days=days), name=name, federation_id=federation.id
    )
    audit.record(
        session,
        actor=principal.label,
        action="token.issued",
        target=f"token {token.id}",
        federation_id=federation.id,
        detail={
            "kind": "coordinator",
            "name": name,
            "prefix": token.prefix,
            "coordinator_key": federation.coordinator_key_fingerprint,
        },  # fmt: skip
    )
    commit(session, "token")
    return plain, token


def revoke_token(session: Session, principal: Principal, token_id: int) -> ApiToken:
    """The anchor admin revokes a federation's machine token; refuses session tokens (not found) and repeats."""
    token = session.get(ApiToken, token_id)
    missing = NotFound(f"token {token_id} not found")
    if token is None or token.kind == TokenKind.session or token.federation_id is None:
        raise missing
    _, role = federation_view(session, principal, token.federation_id, missing=missing)
    require(role, ("anchor",), "revoke tokens")
    if token.revoked_at is not None:
        raise Conflict(f"token {token_id} is already revoked")
    token.revoked_at = utcnow()
    session.add(token)
    audit.record(
        session,
        actor=principal.label,
        action="token.revoked",
        target=f"token {token.id}",
        federation_id=token.federation_id,
        detail={"kind": token.kind, "prefix": token.prefix},
    )
    commit(session, "token")
    return token


def tokens_of(session: Session, principal: Principal, federation_id: int) -> list[ApiToken]:
    """A federation's machine tokens (never their secrets), for its anchor admin only."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "list tokens")
    return list(
        session.exec(select(ApiToken).where(ApiToken.federation_id == federation_id).order_by(col(ApiToken.id)))
    )
