"""User accounts: the anchor admin creates them; everyone changes their own name and password."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session

from portal import audit, crud
from portal.access import Principal, require
from portal.core.errors import Conflict, Forbidden, NotFound
from portal.core.ratelimit import LoginLimiter
from portal.core.security import hash_password, verify_password
from portal.models import ApiToken, Organisation, TokenKind, User, UserCreate, UserUpdate, utcnow
from portal.services._db import commit, conflict_on_clash

__all__ = ["create_user", "update_me"]


def update_me(session: Session, principal: Principal, data: UserUpdate, limiter: LoginLimiter, ip: str) -> User:
    """Change the signed-in user's own name or password (the fields given), with an audit event.

    A new password needs the current one (a stolen session alone cannot take the account over;
    wrong guesses count as failed logins against `limiter`) and ends every other session of the user.
    """
    user = principal.user
    assert user is not None
    if data.password is not None:
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
    commit(session, f"user {user.id}")
    return user


def create_user(session: Session, principal: Principal, data: UserCreate) -> User:
    """An anchor admin creates an account in an existing organisation; an e-mail already taken is a 409."""
    require(principal.kind, ("anchor",), "create users")
    if session.get(Organisation, data.organisation_id) is None:
        raise NotFound(f"organisation {data.organisation_id} not found")
    duplicate = f"a user with e-mail '{data.email}' already exists"
    if crud.get_user_by_email(session, data.email) is not None:
        raise Conflict(duplicate)
    with conflict_on_clash(session, duplicate):
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
    return user
