"""Sign-in: exchange e-mail and password for a session token (rate-limited)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm

from portal import crud
from portal.api.deps import CurrentUser, SessionDep, SettingsDep
from portal.core.errors import Unauthorized
from portal.core.limits import client_address
from portal.core.security import dummy_verify, verify_password
from portal.models import AccessToken, Message, TokenKind, User, utcnow

router = APIRouter(prefix="/login", tags=["login"])


def login(session: SessionDep, settings: SettingsDep, request: Request, email: str, password: str) -> tuple[str, User]:
    """Check the password (a dummy hash when the user is unknown) under the rate limit; issue a session token."""
    limiter = request.app.state.login_limiter
    ip = client_address(request)
    email = email.strip().lower()[:254]
    limiter.check(email, ip)
    user = crud.get_user_by_email(session, email) if "\x00" not in email else None
    if user is None:
        dummy_verify(password)
        ok = False
    else:
        ok = verify_password(password, user.hashed_password) and user.is_active
    if not ok or user is None:
        limiter.failed(email, ip)
        raise Unauthorized("incorrect e-mail or password")
    limiter.succeeded(email)
    plain, _ = crud.issue_token(
        session,
        TokenKind.session,
        lifetime=timedelta(minutes=settings.session_minutes),
        name="session",
        user_id=user.id,
    )
    session.commit()
    return plain, user


@router.post("/access-token", response_model=AccessToken)
def login_access_token(
    session: SessionDep, settings: SettingsDep, request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> AccessToken:
    """OAuth2-compatible password login; returns a bearer token."""
    plain, _ = login(session, settings, request, form.username, form.password)
    return AccessToken(access_token=plain, expires_at=utcnow() + timedelta(minutes=settings.session_minutes))


@router.post("/logout", response_model=Message)
def logout(session: SessionDep, principal: CurrentUser) -> Message:
    """Revoke the session token used for this request."""
    principal.token.revoked_at = utcnow()
    session.add(principal.token)
    session.commit()
    return Message(message="signed out")
