"""Invitations and enrolment: an anchor invites a supplier's site; the site registers its key.

Who may attach a site to an organisation named in an invite (issue 12, finding 2):

* A name no organisation has yet: the invite creates a supplier organisation, recorded as
  created by the inviting anchor. Its enrolment may create the organisation's first admin
  account (``admin_email``).
* An organisation the inviting anchor *controls* -- its own invite created it, and it has no
  membership (in any state) in a federation of another anchor: as above; a second site, or a
  site in another federation of the same anchor.
* Any other organisation (a supplier in another anchor's federation, one created by the
  portal operator or by ``POST /organisations``): the invite is issued, marked
  ``organisation_admin_required``, and only a signed-in admin of that organisation can enrol
  it (``Authorization: Bearer`` with their session token; the web cookie does not count, so a
  cross-site form cannot enrol in their name). Such an enrolment never creates an account.
  Otherwise the anchor invites the site under a new organisation name.

So an invite never hands out membership of an organisation the inviter does not control: the
person holding the invite gets neither an account in it nor a site in its name.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from portal import audit, crud
from portal.access import Principal, federation_view, require
from portal.core.config import Settings
from portal.core.errors import BadRequest, Conflict, Forbidden, Gone, Unauthorized
from portal.core.security import enrolment_message, new_token, parse_site_public_key, token_digest
from portal.models import (
    ApiToken,
    Federation,
    Invite,
    InviteCreate,
    Membership,
    MembershipStatus,
    Organisation,
    OrgKind,
    SiteCredential,
    TokenKind,
    as_utc,
    name_key,
    utcnow,
)
from portal.services._db import commit
from portal.services.organisations import create_owned

__all__ = ["invite_site", "invite_expiry", "invitation_code", "enrol_site", "controls", "organisation_admin_required"]

_USED = "invite token has already been used; ask the anchor for a new invitation"
_EXPIRED = "invite token has expired; ask the anchor for a new invitation"


def _locked_organisation(session: Session, organisation_id: int) -> Organisation:
    """The organisation row, locked until commit on PostgreSQL.

    Invites that attach to an organisation and enrolments into it take this lock, so the
    control check below cannot interleave with another anchor's invite (SQLite serialises
    the writers instead: the check runs after the enrolment's first write).
    """
    return session.exec(select(Organisation).where(Organisation.id == organisation_id).with_for_update()).one()


def controls(session: Session, anchor_org_id: int, organisation: Organisation) -> bool:
    """Whether the anchor controls a supplier organisation (the rule in the module docstring)."""
    if organisation.owner_org_id != anchor_org_id:
        return False
    elsewhere = session.exec(
        select(Membership.id)
        .join(Federation, col(Federation.id) == col(Membership.federation_id))
        .where(Membership.organisation_id == organisation.id, Federation.anchor_org_id != anchor_org_id)
        .limit(1)
    ).first()
    return elsewhere is None


def organisation_admin_required(session: Session, membership: Membership, *, lock: bool = False) -> bool:
    """Whether only a signed-in admin of the site's organisation may enrol this membership.

    `lock` holds the organisation row until commit, for the check that decides an enrolment.
    """
    federation = session.get(Federation, membership.federation_id)
    if lock:
        organisation = _locked_organisation(session, membership.organisation_id)
    else:
        organisation = session.get(Organisation, membership.organisation_id)  # type: ignore[assignment]  # a membership's organisation exists (foreign key)
    assert federation is not None and organisation is not None
    return not controls(session, federation.anchor_org_id, organisation)


def invite_site(
    session: Session, principal: Principal, federation_id: int, data: InviteCreate
) -> tuple[str, Membership]:
    """Invite a supplier organisation's site; returns the single-use invite token (shown once)."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "invite sites")
    org = crud.get_org_by_name(session, data.organisation_name)
    if org is None:
        org = create_owned(session, principal, data.organisation_name, OrgKind.supplier)
    elif org.kind != OrgKind.supplier:
        # Not naming its kind: which organisations are anchors or auditors is theirs to say.
        raise BadRequest(f"organisation '{org.name}' is not a supplier organisation; only suppliers run sites")
    else:
        org = _locked_organisation(session, org.id)  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
    taken = session.exec(
        select(Membership.id).where(
            Membership.federation_id == federation_id, Membership.site_key == name_key(data.site_name)
        )
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
        detail={
            "organisation": org.name,
            "site": data.site_name,
            "expires_at": invite.expires_at.isoformat(),
            "organisation_admin_required": not controls(session, federation.anchor_org_id, org),
        },
    )
    commit(session, f"site '{data.site_name}'")
    return token, membership


def invitation_code(token: str, ca_fingerprint: str | None) -> str:
    """What the supplier pastes into `sangsaeng client enrol --invite`: the token, then '#' and the CA fingerprint."""
    return f"{token}#{ca_fingerprint}" if ca_fingerprint else token


def invite_expiry(session: Session, membership_id: int) -> Any:
    """When the invite of a membership expires (None if it has none); no role check, callers have made one."""
    invite = session.exec(select(Invite).where(Invite.membership_id == membership_id)).first()
    return invite.expires_at if invite else None


def _consume_invite(session: Session, invite: Invite, membership: Membership, now: datetime) -> None:
    """Mark the invite used and the site enrolled, or raise if another request got there first.

    The checks above read the invite; two requests can both read it unused. Each conditional
    UPDATE below changes its row only while the row is still unused (invited); the database
    holds the row lock until commit, so exactly one request sees a row changed and the others
    see none (PostgreSQL re-checks the WHERE after the winner commits; SQLite has one writer).
    """
    used = session.execute(
        update(Invite)
        .where(col(Invite.id) == invite.id, col(Invite.used_at).is_(None), col(Invite.expires_at) > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    enrolled = None
    if used.rowcount == 1:  # type: ignore[attr-defined]  # exec(update) is typed as a select result
        enrolled = session.execute(
            update(Membership)
            .where(col(Membership.id) == membership.id, col(Membership.status) == MembershipStatus.invited.value)
            .values(status=MembershipStatus.enrolled.value, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    if enrolled is None or enrolled.rowcount != 1:  # type: ignore[attr-defined]  # exec(update) is typed as a select result
        session.rollback()
        session.refresh(invite)
        if invite.used_at is None and as_utc(invite.expires_at) <= now:
            raise Gone(_EXPIRED)
        raise Conflict(_USED)
    session.refresh(membership)


def _check_enroller(
    session: Session, membership: Membership, enroller: Principal | None, *, creates_account: bool
) -> None:
    """Refuse an enrolment into an organisation the inviter does not control unless its own admin makes it.

    Runs after the invite is consumed: the organisation row is locked (PostgreSQL) or the
    database's one write lock is held (SQLite), so no other anchor's invite lands in between.
    The reasons name neither the organisation nor anything else of it.
    """
    if not organisation_admin_required(session, membership, lock=True):
        return
    own_admin = (
        enroller is not None
        and enroller.token.kind == TokenKind.session
        and enroller.org is not None
        and enroller.org.id == membership.organisation_id
    )
    if not own_admin:
        session.rollback()
        raise Forbidden(
            f"site '{membership.site_name}' is invited into an organisation that already exists on this portal: "
            "a signed-in admin of that organisation must enrol it (send their session token as "
            "'Authorization: Bearer'), or the anchor invites the site under a new organisation name"
        )
    if creates_account:
        session.rollback()
        raise Forbidden(
            "admin_email cannot add an account to an organisation that already exists; its own admins manage "
            "its accounts: enrol without admin_email"
        )


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
    enroller: Principal | None = None,
    network_ca_fingerprint: str | None = None,
) -> tuple[Membership, str, ApiToken]:
    """Register a site's public key with a single-use invite; returns the site's client token.

    `enroller` is whoever signed the request (``Authorization: Bearer``), if anyone: an
    invite into an organisation the inviting anchor does not control needs one of that
    organisation's signed-in users (see the module docstring). `network_ca_fingerprint` is
    the one the invitation carried: another federation CA refuses the enrolment before the
    invite is used.
    """
    invite = session.exec(select(Invite).where(Invite.token_hash == token_digest(invite_token))).first()
    if invite is None:
        raise Unauthorized("invite token is not valid (unknown or forged)")
    if invite.used_at is not None:
        raise Conflict(_USED)
    if as_utc(invite.expires_at) <= utcnow():
        raise Gone(_EXPIRED)
    membership = session.get(Membership, invite.membership_id)
    assert membership is not None
    if membership.status != MembershipStatus.invited:
        raise Conflict(f"site '{membership.site_name}' is already {membership.status}; it cannot enrol again")
    federation = session.get(Federation, membership.federation_id)
    assert federation is not None
    if network_ca_fingerprint is not None and network_ca_fingerprint != federation.network_ca_fingerprint:
        # Before the invite is used: the supplier asks the anchor and enrols again with the same invite.
        have = federation.network_ca_fingerprint
        raise Conflict(
            f"the invitation names network CA certificate {network_ca_fingerprint[:16]}…, but this federation's is "
            + (f"{have[:16]}…" if have else "not set")
            + ": do not enrol; ask the anchor which is right (the invite stays unused)"
        )
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
    _consume_invite(session, invite, membership, now)
    _check_enroller(session, membership, enroller, creates_account=admin_email is not None)
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
        name=f"site {membership.site_name}"[:100],  # the column holds 100: a 100-character site name fits
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
