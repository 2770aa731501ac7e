"""Dependencies shared by the routes: settings, database session, the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from portal.access import Principal, authenticate
from portal.core.config import Settings
from portal.core.errors import Forbidden
from portal.core.security import ReleaseSigner
from portal.models import TokenKind

__all__ = ["SessionDep", "SettingsDep", "SignerDep", "CurrentPrincipal", "CurrentUser", "SESSION_COOKIE"]

SESSION_COOKIE = "sangsaeng_session"
_bearer = HTTPBearer(auto_error=False, description="A session, coordinator or client token")


def get_settings(request: Request) -> Settings:
    """The portal's settings, from the application's state."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request, closed after it; loaded objects stay readable after commit."""
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


def get_signer(request: Request) -> ReleaseSigner:
    """The portal's release signer, from the application's state."""
    return request.app.state.signer


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SignerDep = Annotated[ReleaseSigner, Depends(get_signer)]


def get_principal(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from ``Authorization: Bearer`` only.

    The web session cookie is not accepted here: a browser attaches it to any request, even a
    form posted by another site or a sibling subdomain, so a cookie-authenticated API would be
    open to cross-site request forgery. No page calls the API; scripts and machines send tokens.
    """
    return authenticate(session, credentials.credentials if credentials is not None else None)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def get_current_user(principal: CurrentPrincipal) -> Principal:
    """A signed-in person (not a machine token)."""
    if principal.token.kind != TokenKind.session:
        raise Forbidden("this route is for signed-in users, not machine tokens")
    return principal


CurrentUser = Annotated[Principal, Depends(get_current_user)]
