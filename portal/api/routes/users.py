"""Users: who am I; the anchor admin creates accounts (e.g. for auditors)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import update

from portal import audit, crud
from portal.access import require
from portal.api.deps import CurrentUser, SessionDep
from portal.core.errors import Conflict, Forbidden, NotFound
from portal.models import ApiToken, Organisation, TokenKind, UserCreate, UserPublic, UserUpdate, utcnow

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserPublic)
def read_me(session: SessionDep, principal: CurrentUser) -> UserPublic:
    return crud.user_public(session, principal.user)  # type: ignore[arg-type]


@router.patch("/me", response_model=UserPublic)
def update_me(session: SessionDep, principal: CurrentUser, data: UserUpdate, request: Request) -> UserPublic:
    """Change one's own name or password.

    A new password needs the current one (a stolen session alone cannot take the account over;
    wrong guesses count as failed logins) and ends every other session of the user.
    """
    from portal.core.limits import client_address
    from portal.core.security import hash_password, verify_password

    user = principal.user
    assert user is not None
    if data.password is not None:
        limiter, ip = request.app.state.login_limiter, client_address(request)
        limiter.check(user.email, ip)
        if not verify_password(data.current_password or "", user.hashed_password):
            limiter.failed(user.email, ip)
            raise Forbidden("the current password is not correct")
        user.hashed_password = hash_password(data.password)
        session.exec(
            update(ApiToken)
            .where(
                ApiToken.user_id == user.id,
                ApiToken.kind == TokenKind.session,
                ApiToken.id != principal.token.id,
                ApiToken.revoked_at.is_(None),  # type: ignore[union-attr]
            )
            .values(revoked_at=utcnow())
        )  # type: ignore[call-overload]
    if data.full_name is not None:
        user.full_name = data.full_name
    session.add(user)
    audit.record(
        session,
        actor=principal.label,
        action="user.updated",
        target=f"user {user.id}",
        detail={"fields": sorted(data.model_dump(exclude_unset=True, exclude_none=True, exclude={"current_password"}))},
    )
    session.commit()
    return crud.user_public(session, user)


@router.post("", response_model=UserPublic, status_code=201)
def create_user(session: SessionDep, principal: CurrentUser, data: UserCreate) -> UserPublic:
    """Anchor admins create user accounts (their own staff, auditors, supplier admins)."""
    require(principal.kind, ("anchor",), "create users")
    if session.get(Organisation, data.organisation_id) is None:
        raise NotFound(f"organisation {data.organisation_id} not found")
    if crud.get_user_by_email(session, data.email) is not None:
        raise Conflict(f"a user with e-mail '{data.email}' already exists")
    user = crud.create_user(
        session,
        email=data.email,
        password=data.password,
        organisation_id=data.organisation_id,
        full_name=data.full_name,
    )
    audit.record(
        session,
        actor=principal.label,
        action="user.created",
        target=f"user {user.id}",
        detail={"email": user.email, "organisation_id": user.organisation_id},
    )
    session.commit()
    return crud.user_public(session, user)
