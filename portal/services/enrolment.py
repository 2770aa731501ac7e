"""Invitations and enrolment: an anchor invites a supplier's site; the site registers its key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import Session, select

from portal import audit, crud
from portal.access import Principal, federation_view, require
from portal.core.config import Settings
from portal.core.errors import BadRequest, Conflict, Gone, Unauthorized
from portal.core.security import enrolment_message, new_token, parse_site_public_key, token_digest
from portal.models import (
    ApiToken,
    Invite,
    InviteCreate,
    Membership,
    MembershipStatus,
    OrgKind,
    SiteCredential,
    TokenKind,
    as_utc,
    utcnow,
)
from portal.services._db import commit

__all__ = ["invite_site", "invite_expiry", "enrol_site"]


def invite_site(
    session: Session, principal: Principal, federation_id: int, data: InviteCreate
) -> tuple[str, Membership]:
    """Invite a supplier organisation's site; returns the single-use invite token (shown once)."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "invite sites")
    org = crud.get_org_by_name(session, data.organisation_name)
    if org is None:
        org = crud.create_org(session, data.organisation_name, OrgKind.supplier)
        audit.record(
            session,
            actor=principal.label,
            action="organisation.created",
            target=f"organisation {org.id}",
            detail={"name": org.name, "kind": "supplier"},
        )
    elif org.kind != OrgKind.supplier:
        raise BadRequest(f"organisation '{org.name}' is a {org.kind}, not a supplier; only suppliers run sites")
    taken = session.exec(
        select(Membership.id).where(Membership.federation_id == federation_id, Membership.site_name == data.site_name)
    ).first()
    if taken is not None:
        raise Conflict(f"site name '{data.site_name}' is already used in federation {federation_id}")
    membership = Membership(
        federation_id=federation_id,
        organisation_id=org.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        site_name=data.site_name,
        status=MembershipStatus.invited,
    )
    session.add(membership)
    session.flush()
    token = new_token("ssi")
    invite = Invite(
        membership_id=membership.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        token_hash=token_digest(token),
        expires_at=utcnow() + timedelta(hours=data.expires_hours),
        created_by_id=principal.user.id if principal.user else None,
    )
    session.add(invite)
    audit.record(
        session,
        actor=principal.label,
        action="membership.invited",
        target=f"membership {membership.id}",
        federation_id=federation.id,
        detail={"organisation": org.name, "site": data.site_name, "expires_at": invite.expires_at.isoformat()},
    )
    commit(session, f"site '{data.site_name}'")
    return token, membership


def invite_expiry(session: Session, membership_id: int) -> Any:
    """When the invite of a membership expires (None if it has none); no role check, callers have made one."""
    invite = session.exec(select(Invite).where(Invite.membership_id == membership_id)).first()
    return invite.expires_at if invite else None


def enrol_site(
    session: Session,
    settings: Settings,
    *,
    invite_token: str,
    public_key: str,
    proof: str,
    admin_email: str | None = None,
    admin_password: str | None = None,
    admin_name: str = "",
) -> tuple[Membership, str, ApiToken]:
    """Register a site's public key with a single-use invite; returns the site's client token."""
    invite = session.exec(select(Invite).where(Invite.token_hash == token_digest(invite_token))).first()
    if invite is None:
        raise Unauthorized("invite token is not valid (unknown or forged)")
    if invite.used_at is not None:
        raise Conflict("invite token has already been used; ask the anchor for a new invitation")
    if as_utc(invite.expires_at) <= utcnow():
        raise Gone("invite token has expired; ask the anchor for a new invitation")
    membership = session.get(Membership, invite.membership_id)
    assert membership is not None
    if membership.status != MembershipStatus.invited:
        raise Conflict(f"site '{membership.site_name}' is already {membership.status}; it cannot enrol again")
    key = parse_site_public_key(public_key)
    if not key.verify(proof, enrolment_message(invite_token, key.openssh)):
        raise BadRequest("proof of possession does not verify: sign the enrolment message with the new private key")
    if session.exec(select(SiteCredential.id).where(SiteCredential.fingerprint == key.fingerprint)).first():
        raise Conflict(f"public key {key.fingerprint} is already registered for a site; generate a new key pair")
    if (admin_email is None) != (admin_password is None):
        raise BadRequest("give both admin_email and admin_password to create the supplier admin account, or neither")
    if admin_email is not None and crud.get_user_by_email(session, admin_email) is not None:
        raise Conflict(f"a user with e-mail '{admin_email}' already exists")
    now = utcnow()
    invite.used_at = now
    membership.status = MembershipStatus.enrolled
    membership.updated_at = now
    session.add_all([invite, membership])
    session.add(
        SiteCredential(
            membership_id=membership.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
            algorithm=key.algorithm,
            public_key=key.openssh,
            fingerprint=key.fingerprint,
            not_before=now,
            not_after=now + timedelta(days=settings.site_key_days),
        )
    )
    actor = f"site {membership.site_name} (membership {membership.id})"
    if admin_email is not None and admin_password is not None:
        user = crud.create_user(
            session,
            email=admin_email,
            password=admin_password,
            organisation_id=membership.organisation_id,
            full_name=admin_name,
        )
        audit.record(
            session,
            actor=actor,
            action="user.created",
            target=f"user {user.id}",
            detail={"email": user.email, "organisation_id": membership.organisation_id},
        )
    plain, token = crud.issue_token(
        session,
        TokenKind.client,
        lifetime=timedelta(days=settings.client_token_days),
        name=f"site {membership.site_name}",
        federation_id=membership.federation_id,
        membership_id=membership.id,
    )
    audit.record(
        session,
        actor=actor,
        action="membership.enrolled",
        target=f"membership {membership.id}",
        federation_id=membership.federation_id,
        detail={"site": membership.site_name, "fingerprint": key.fingerprint},
    )
    commit(session, "enrolment")
    return membership, plain, token
