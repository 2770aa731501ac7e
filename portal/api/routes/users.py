"""Users: who am I; the anchor admin creates accounts (e.g. for auditors)."""

from __future__ import annotations

from fastapi import APIRouter

from portal import crud
from portal.api.deps import CurrentUser, SessionDep
from portal.models import UserCreate, UserPublic, UserUpdate
from portal.services import users

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserPublic)
def read_me(session: SessionDep, principal: CurrentUser) -> UserPublic:
    """The signed-in user's account and role."""
    return crud.user_public(session, principal.user)  # type: ignore[arg-type]  # CurrentUser has a user


@router.patch("/me", response_model=UserPublic)
def update_me(session: SessionDep, principal: CurrentUser, data: UserUpdate) -> UserPublic:
    """Change one's own name or password."""
    return crud.user_public(session, users.update_me(session, principal, data))


@router.post("", response_model=UserPublic, status_code=201)
def create_user(session: SessionDep, principal: CurrentUser, data: UserCreate) -> UserPublic:
    """Anchor admins create user accounts (their own staff, auditors, supplier admins)."""
    return crud.user_public(session, users.create_user(session, principal, data))
