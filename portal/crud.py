"""Plain database operations (no access rules; callers check those first)."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, select

from portal.core.security import hash_password, new_token, token_digest
from portal.models import (
    ApiToken,
    Membership,
    MembershipPublic,
    Organisation,
    OrgKind,
    SiteCredential,
    TokenKind,
    User,
    UserPublic,
    name_key,
    utcnow,
)

__all__ = [
    "get_user_by_email",
    "get_org_by_name",
    "create_org",
    "create_user",
    "issue_token",
    "user_public",
    "membership_public",
    "current_credential",
]

TOKEN_PREFIX = {TokenKind.session: "sss", TokenKind.coordinator: "ssc", TokenKind.client: "ssk"}


def get_user_by_email(session: Session, email: str) -> User | None:
    """The user with `email` (matched stripped and lower-cased), or None."""
    return session.exec(select(User).where(User.email == email.strip().lower())).first()


def get_org_by_name(session: Session, name: str) -> Organisation | None:
    """The organisation whose name equals `name` after NFKC, case folding and collapsed spaces."""
    return session.exec(select(Organisation).where(Organisation.name_key == name_key(name))).first()


def create_org(session: Session, name: str, kind: OrgKind) -> Organisation:
    """Add an organisation and flush it so it has an id (no access check, no commit)."""
    org = Organisation(name=name, kind=kind)
    session.add(org)
    session.flush()
    return org


def create_user(
    session: Session, *, email: str, password: str, organisation_id: int, full_name: str = "", hashed: str | None = None
) -> User:
    """Add a user with an argon2id hash of `password` (or `hashed` as given) and flush it; no access check."""
    user = User(
        email=email.strip().lower(),
        full_name=full_name,
        hashed_password=hashed or hash_password(password),
        organisation_id=organisation_id,
    )
    session.add(user)
    session.flush()
    return user


def issue_token(
    session: Session,
    kind: TokenKind,
    *,
    lifetime: timedelta,
    name: str = "",
    user_id: int | None = None,
    federation_id: int | None = None,
    membership_id: int | None = None,
) -> tuple[str, ApiToken]:
    """A new token (plaintext returned once) and its stored row."""
    plain = new_token(TOKEN_PREFIX[kind])
    row = ApiToken(
        kind=kind,
        name=name,
        token_hash=token_digest(plain),
        prefix=plain[:10],
        user_id=user_id,
        federation_id=federation_id,
        membership_id=membership_id,
        expires_at=utcnow() + lifetime,
    )
    session.add(row)
    session.flush()
    return plain, row


def user_public(session: Session, user: User) -> UserPublic:
    """The user's public view; `role` is its organisation's kind (supplier if the organisation is gone)."""
    org = session.get(Organisation, user.organisation_id)
    return UserPublic(
        id=user.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        email=user.email,
        full_name=user.full_name,
        organisation_id=user.organisation_id,
        role=OrgKind(org.kind) if org else OrgKind.supplier,
        is_active=user.is_active,
    )


def current_credential(session: Session, membership_id: int) -> SiteCredential | None:
    """The membership's newest site credential, revoked or not; None before the site enrols."""
    return session.exec(
        select(SiteCredential)
        .where(SiteCredential.membership_id == membership_id)
        .order_by(col(SiteCredential.id).desc())
        .limit(1)
    ).first()


def membership_public(
    session: Session,
    membership: Membership,
    org_names: dict[int, str] | None = None,
    fingerprints: dict[int, str] | None = None,
) -> MembershipPublic:
    """The membership's public view, with its organisation's name and its current key fingerprint.

    `org_names` and `fingerprints`, when given, answer those look-ups without a query per membership.
    """
    if org_names is not None and membership.organisation_id in org_names:
        org_name = org_names[membership.organisation_id]
    else:
        org = session.get(Organisation, membership.organisation_id)
        org_name = org.name if org else "?"
    if fingerprints is not None:
        fingerprint = fingerprints.get(membership.id)  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
    else:
        credential = current_credential(session, membership.id)  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        fingerprint = credential.fingerprint if credential else None
    return MembershipPublic(
        id=membership.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        federation_id=membership.federation_id,
        organisation_id=membership.organisation_id,
        organisation_name=org_name,
        site_name=membership.site_name,
        status=membership.status,
        key_fingerprint=fingerprint,
        created_at=membership.created_at,
        updated_at=membership.updated_at,
    )
