"""Users: who am I; one's own name and password; the anchor admin creates accounts in its own organisations."""

from __future__ import annotations

from fastapi import APIRouter, Request

from portal import crud
from portal.api.deps import CurrentUser, SessionDep
from portal.core.errors import Forbidden
from portal.core.limits import client_address
from portal.models import UserCreate, UserPublic, UserUpdate
from portal.services import users

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserPublic)
def read_me(session: SessionDep, principal: CurrentUser) -> UserPublic:
    """The signed-in user's account and role."""
    return crud.user_public(session, principal.user)  # type: ignore[arg-type]  # CurrentUser has a user


@router.patch("/me", response_model=UserPublic)
def update_me(session: SessionDep, principal: CurrentUser, request: Request, data: UserUpdate) -> UserPublic:
    """Change one's own name or password; a new password needs `current_password` and ends the other sessions.

    Wrong current passwords count against the sign-in rate limit of the account, so a
    stolen session cannot be used to guess the password.
    """
    if data.password is None:
        return crud.user_public(session, users.update_me(session, principal, data))
    limiter = request.app.state.login_limiter
    email, ip = principal.user.email, client_address(request)  # type: ignore[union-attr]  # CurrentUser has a user
    limiter.check(email, ip)
    try:
        user = users.update_me(session, principal, data)
    except Forbidden:
        limiter.failed(email, ip)
        raise
    return crud.user_public(session, user)


@router.post("", response_model=UserPublic, status_code=201)
def create_user(session: SessionDep, principal: CurrentUser, data: UserCreate) -> UserPublic:
    """An anchor admin creates accounts in its own organisation and the auditor organisations it created.

    Supplier admins come from enrolment; an organisation the caller does not share a
    federation with is a 404.
    """
    return crud.user_public(session, users.create_user(session, principal, data))
