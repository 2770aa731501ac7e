"""User accounts: an anchor admin creates them in its own organisations; everyone changes their own.

Where an anchor admin may create accounts: its own organisation, and the auditor
organisations it created (it owns them: `Organisation.owner_org_id`). A supplier's accounts
come from enrolment (the site's admin), never from an anchor; another anchor's or another
tenant's organisation reads as not found. A password change needs the current password and
signs out every other session of the account.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from portal import audit, crud
from portal.access import Principal, require
from portal.core.errors import BadRequest, Conflict, Forbidden
from portal.core.security import hash_password, verify_password
from portal.models import ApiToken, OrgKind, TokenKind, User, UserCreate, UserUpdate, utcnow
from portal.services._db import commit, conflict_on_clash
from portal.services.organisations import visible_organisation

__all__ = ["create_user", "update_me", "WRONG_PASSWORD"]

WRONG_PASSWORD = "current password is incorrect"


def update_me(session: Session, principal: Principal, data: UserUpdate) -> User:
    """Change the signed-in user's own name or password (the fields given), with an audit event.

    A new password needs `current_password` (a stolen session alone cannot take the account
    over) and revokes the account's other session tokens; this session stays signed in.
    """
    user = principal.user
    assert user is not None
    ended = 0
    if data.password is not None:
        if not data.current_password:
            raise BadRequest("give current_password to change the password")
        if not verify_password(data.current_password, user.hashed_password):
            raise Forbidden(WRONG_PASSWORD)
        user.hashed_password = hash_password(data.password)
        now = utcnow()
        for token in session.exec(
            select(ApiToken).where(
                ApiToken.user_id == user.id,
                ApiToken.kind == TokenKind.session,
                ApiToken.id != principal.token.id,
                col(ApiToken.revoked_at).is_(None),
            )
        ):
            token.revoked_at = now
            session.add(token)
            ended += 1
    if data.full_name is not None:
        user.full_name = data.full_name
    session.add(user)
    given = data.model_dump(exclude_unset=True, exclude_none=True).keys() - {"current_password"}
    detail: dict[str, object] = {"fields": sorted(given)}
    if data.password is not None:
        detail["other_sessions_ended"] = ended
    audit.record(session, actor=principal.label, action="user.updated", target=f"user {user.id}", detail=detail)
    commit(session, f"user {user.id}")
    return user


def create_user(session: Session, principal: Principal, data: UserCreate) -> User:
    """An anchor admin creates an account in its own organisation or an auditor organisation it owns.

    An organisation the caller cannot see is a 404 worded as for an id that does not exist;
    a visible one it may not add people to is a 403 saying why; a taken e-mail is a 409.
    """
    require(principal.kind, ("anchor",), "create users")
    own = principal.org_id
    org = visible_organisation(session, principal, data.organisation_id)
    if org.id != own:
        if org.kind == OrgKind.supplier:
            raise Forbidden(
                f"accounts of supplier '{org.name}' come from enrolment (the site's admin_email), not from an anchor"
            )
        if org.kind != OrgKind.auditor or org.owner_org_id != own:
            raise Forbidden(
                f"cannot create accounts in '{org.name}': an anchor admin creates them only in its own "
                "organisation and in the auditor organisations it created"
            )
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
