"""Tables and API schemas, in the full-stack template's families: Base -> Create/Update -> table -> Public.

Table names are explicit (``user`` is reserved in PostgreSQL). Enumerations are stored as
short strings so SQLite and PostgreSQL share one schema. Timestamps are UTC.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StringConstraints, field_validator
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    event,
    false,
)
from sqlmodel import Field, SQLModel

from portal.api.params import DbId


def utcnow() -> datetime:
    """Now, as a timezone-aware UTC datetime: the default of every stored time."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _tz() -> Any:
    return Column(DateTime(timezone=True), nullable=False, default=utcnow)


def _tz_null() -> Any:
    return Column(DateTime(timezone=True), nullable=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def name_key(name: str) -> str:
    """The key two names clash on: SHA-256 of the name after NFKC, case folding and collapsed spaces.

    "ACME Ｐarts", "acme parts" and "Acme  Parts" share one key, so a look-alike name cannot
    pose as a second organisation or site. The digest keeps the indexed column at 64
    characters however far NFKC expands a name.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return hashlib.sha256(" ".join(folded.split()).encode("utf-8")).hexdigest()


Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), AfterValidator(_printable)
]
Text = Annotated[str, StringConstraints(max_length=1000), AfterValidator(lambda v: _printable(v) if v else v)]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
SemVer = Annotated[
    str,
    StringConstraints(
        pattern=r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})(-[0-9A-Za-z-]{1,20}(\.[0-9A-Za-z-]{1,20}){0,4})?$"
    ),
]
Sha256Hex = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[0-9a-fA-F]{64}$")]
MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")]


class OrgKind(StrEnum):
    """An organisation's kind: an anchor runs federations, a supplier's sites train, an auditor reads."""

    anchor = "anchor"
    supplier = "supplier"
    auditor = "auditor"


class MembershipStatus(StrEnum):
    """A site's lifecycle, invited to active; the moves are `portal.services.memberships.TRANSITIONS`."""

    invited = "invited"
    enrolled = "enrolled"
    approved = "approved"
    active = "active"
    suspended = "suspended"
    revoked = "revoked"
    rejected = "rejected"


class ReleaseStatus(StrEnum):
    """A release's lifecycle: draft (uploaded), approved, published (signed), or withdrawn from any of them."""

    draft = "draft"
    approved = "approved"
    published = "published"
    withdrawn = "withdrawn"


class TokenKind(StrEnum):
    """Whom a bearer token acts for: a signed-in user (session), a federation's coordinator, one site (client)."""

    session = "session"
    coordinator = "coordinator"
    client = "client"


class RunStatus(StrEnum):
    """How a reported training run stands: still running, completed, failed, or interrupted.

    *interrupted*: the anchor marked a run whose coordinator stopped reporting (it died hard and
    never reported an end); the coordinator's next report of it (``coordinator run --resume``)
    makes it running again.
    """

    running = "running"
    completed = "completed"
    failed = "failed"
    interrupted = "interrupted"


# -- organisations ---------------------------------------------------------------------------
class OrganisationBase(SQLModel):
    """An organisation's name (1-100 printable characters) and kind, shared by its create, table and public forms."""

    name: Name = Field(sa_column=Column(String(100), unique=True, nullable=False))
    kind: OrgKind = Field(sa_column=Column(String(20), nullable=False))


class OrganisationCreate(OrganisationBase):
    """An anchor admin's new supplier or auditor organisation (``POST /organisations``)."""

    pass


class Organisation(OrganisationBase, table=True):
    """An organisation; `owner_org_id` is the anchor organisation that created it through the API (if any)."""

    __tablename__ = "organisation"
    id: int | None = Field(default=None, primary_key=True)
    # Set from `name` on every insert and update (see `_keep_organisation_key`); the unique index makes
    # the database refuse a look-alike name even when two requests race.
    name_key: str = Field(default="", sa_column=Column(String(64), unique=True, index=True, nullable=False))
    # The anchor organisation that created this one: through the API (an auditor organisation) or
    # by inviting a new supplier by name. Only that anchor may attach new sites and accounts to a
    # supplier organisation without its own admin (portal.services.enrolment). Never in a Public
    # schema: it names another tenant.
    owner_org_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class OrganisationPublic(OrganisationBase):
    """An organisation as the API shows it to those who may see it; no name key, no owner."""

    id: int
    created_at: datetime


# -- users -----------------------------------------------------------------------------------
class UserBase(SQLModel):
    """A user's e-mail (lower-cased; one ``@`` and a dot in the domain) and name, shared by create, table and public."""

    email: Email = Field(sa_column=Column(String(254), unique=True, index=True, nullable=False))
    full_name: str = Field(default="", max_length=100)


class UserCreate(UserBase):
    """A new account (``POST /users``; ``portal create-admin`` checks with it): a password of 8-128 characters."""

    password: Password
    organisation_id: DbId


class UserUpdate(SQLModel):
    """One's own name and/or password; a new password needs the current one and ends one's other sessions."""

    full_name: Name | None = None
    password: Password | None = None
    current_password: str | None = Field(default=None, max_length=128)


class User(UserBase, table=True):
    """A person's account; only this table holds the argon2id password hash."""

    __tablename__ = "user_account"
    id: int | None = Field(default=None, primary_key=True)
    hashed_password: str = Field(max_length=200)
    organisation_id: int = Field(foreign_key="organisation.id", index=True)
    is_active: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class UserPublic(UserBase):
    """An account as its owner or the anchor admin who made it sees it: no hash; `role` is its organisation's kind."""

    id: int
    organisation_id: int
    role: OrgKind
    is_active: bool


# -- API tokens --------------------------------------------------------------------------------
class ApiToken(SQLModel, table=True):
    """A bearer credential. Only the SHA-256 of the token is stored."""

    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    kind: TokenKind = Field(sa_column=Column(String(20), nullable=False))
    name: str = Field(default="", max_length=100)
    token_hash: str = Field(sa_column=Column(String(64), unique=True, index=True, nullable=False))
    prefix: str = Field(max_length=12)
    user_id: int | None = Field(default=None, foreign_key="user_account.id", index=True)
    federation_id: int | None = Field(default=None, foreign_key="federation.id", index=True)
    membership_id: int | None = Field(default=None, foreign_key="membership.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=_tz_null())


class TokenCreate(SQLModel):
    """An anchor admin's request for a coordinator token: a name, 1-730 days, optionally the key to pin."""

    name: Name = "coordinator"
    days: int = Field(default=90, ge=1, le=730)
    coordinator_public_key_pem: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="the coordinator's Ed25519 report-signing key (coordinator.pub.pem), pinned for the federation "
        "if it pins none yet; a different key than the pinned one is refused (rotate it instead)",
    )


class TokenPublic(SQLModel):
    """A machine token as its federation's anchor admin sees it: the prefix, never the secret or its hash."""

    id: int
    kind: TokenKind
    name: str
    prefix: str
    federation_id: int | None
    membership_id: int | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class TokenIssued(TokenPublic):
    """A new coordinator token with its secret, shown this once, and the federation's pinned key fingerprint."""

    token: str  # shown once
    coordinator_key_fingerprint: str | None = None  # the federation's pinned report-signing key


class AccessToken(SQLModel):
    """The password login's answer (OAuth2 form): a session bearer token and when it expires."""

    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


# -- federations -------------------------------------------------------------------------------
class FederationBase(SQLModel):
    """A federation's name, task and description, shared by its create, table and public forms."""

    name: Name = Field(sa_column=Column(String(100), unique=True, nullable=False))
    task_name: Name = Field(max_length=100)
    description: Text = Field(default="", max_length=1000)


class FederationCreate(FederationBase):
    """An anchor admin's new federation: the release metric (default: the task's primary) and threshold.

    A threshold that is not a finite number is refused.
    """

    metric: MetricName | None = None  # default: the task's primary metric
    threshold: float = 0.0

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("threshold must be a finite number")
        return value


class Federation(FederationBase, table=True):
    """A federation. It pins the one key its coordinator's privacy reports verify against, and its DP policy."""

    __tablename__ = "federation"
    id: int | None = Field(default=None, primary_key=True)
    anchor_org_id: int = Field(foreign_key="organisation.id", index=True)
    metric: str = Field(max_length=40)
    threshold: float
    higher_is_better: bool = True
    task_spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())
    # The coordinator's Ed25519 report-signing key, pinned by the anchor (SubjectPublicKeyInfo PEM).
    coordinator_key_pem: str | None = Field(default=None, max_length=2000)
    coordinator_key_fingerprint: str | None = Field(default=None, max_length=64)
    coordinator_key_pinned_at: datetime | None = Field(default=None, sa_column=_tz_null())
    # The DP policy: set, the federation is a DP federation, and no site may spend more per released run.
    dp_max_epsilon: float | None = None
    # The network the sites join (set by the anchor): its CA certificate (PEM), that certificate's
    # SHA-256 fingerprint (hex of the DER bytes, carried in invitations) and the SuperLink fleet address.
    network_ca_pem: str | None = Field(default=None, max_length=20000)
    network_ca_fingerprint: str | None = Field(default=None, max_length=64)
    superlink_address: str | None = Field(default=None, max_length=300)
    # The minimum contribution for release access (issue 16 item 4; null: off): a supplier whose sites'
    # share of the release's run, on `contribution_basis`, is below it cannot pull the release.
    min_contribution_share: float | None = None
    contribution_basis: str = Field(
        default="utility_share",
        sa_column=Column(String(20), nullable=False, default="utility_share", server_default="utility_share"),
    )


class FederationPublic(FederationBase):
    """A federation as anyone with a part in it sees it: the release gate and the pinned key's fingerprint."""

    id: int
    anchor_org_id: int
    metric: str
    threshold: float
    higher_is_better: bool
    created_at: datetime
    coordinator_key_fingerprint: str | None = None
    dp_max_epsilon: float | None = None
    network_ca_fingerprint: str | None = None
    superlink_address: str | None = None
    min_contribution_share: float | None = None
    contribution_basis: str = "utility_share"


class CoordinatorKeyRegister(SQLModel):
    """The anchor pins (or rotates to) its coordinator's report-signing key."""

    public_key_pem: str = Field(
        min_length=1, max_length=2000, description="coordinator.pub.pem: Ed25519, SubjectPublicKeyInfo PEM"
    )


class CoordinatorKeyPublic(SQLModel):
    """A federation's pinned coordinator key: the only key its privacy reports verify against."""

    federation_id: int
    algorithm: str = "Ed25519"
    public_key_pem: str
    fingerprint: str
    pinned_at: datetime


def _positive_finite(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ValueError("must be a positive finite number, or null for no DP policy")
    return value


class PrivacyPolicyUpdate(SQLModel):
    """The federation's DP policy; null makes it a federation without one."""

    dp_max_epsilon: Annotated[float | None, AfterValidator(_positive_finite)] = Field(
        description="the most epsilon any site may spend in a released run; set, every release needs a "
        "signed privacy report verified against the pinned coordinator key",
    )


class AuditorAssignment(SQLModel, table=True):
    """An auditor organisation assigned to read one federation (one row per pair)."""

    __tablename__ = "auditor_assignment"
    __table_args__ = (UniqueConstraint("federation_id", "organisation_id"),)
    id: int | None = Field(default=None, primary_key=True)
    federation_id: int = Field(foreign_key="federation.id", index=True)
    organisation_id: int = Field(foreign_key="organisation.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class AuditorAssign(SQLModel):
    """An anchor admin's choice of auditor organisation for its federation, by id."""

    organisation_id: DbId


# -- memberships and enrolment ------------------------------------------------------------------
class Membership(SQLModel, table=True):
    """One site of a supplier organisation in a federation and its lifecycle status.

    Two sites of a federation cannot share a name, nor a look-alike one (`site_key`). Never
    returned as is: responses go through `MembershipPublic`.
    """

    __tablename__ = "membership"
    __table_args__ = (
        UniqueConstraint("federation_id", "site_name"),
        Index("ix_membership_federation_site_key", "federation_id", "site_key", unique=True),
    )
    id: int | None = Field(default=None, primary_key=True)
    federation_id: int = Field(foreign_key="federation.id", index=True)
    organisation_id: int = Field(foreign_key="organisation.id", index=True)
    site_name: str = Field(max_length=100)
    site_key: str = Field(default="", max_length=64)  # name_key(site_name), kept by `_keep_site_key`
    status: MembershipStatus = Field(sa_column=Column(String(20), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class MembershipPublic(SQLModel):
    """A site as the anchor, the coordinator and its own organisation see it (auditors do not)."""

    id: int
    federation_id: int
    organisation_id: int
    organisation_name: str
    site_name: str
    status: MembershipStatus
    key_fingerprint: str | None = None
    created_at: datetime
    updated_at: datetime


class Invite(SQLModel, table=True):
    """A site's single-use invite: only the token's SHA-256 is kept, and `used_at` marks it spent."""

    __tablename__ = "invite"
    id: int | None = Field(default=None, primary_key=True)
    membership_id: int = Field(foreign_key="membership.id", index=True)
    token_hash: str = Field(sa_column=Column(String(64), unique=True, index=True, nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=_tz_null())
    created_by_id: int | None = Field(default=None, foreign_key="user_account.id")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class InviteCreate(SQLModel):
    """An anchor admin's invite: the supplier organisation's and the site's names, and 1-720 hours to use it."""

    organisation_name: Name
    site_name: Name
    expires_hours: int = Field(default=72, ge=1, le=24 * 30)


class InviteIssued(SQLModel):
    """The invite the anchor admin hands to the site: the token, shown this once, and who must enrol with it."""

    membership: MembershipPublic
    token: str  # shown once; single use
    expires_at: datetime
    organisation_admin_required: bool = Field(
        default=False,
        description="The organisation already existed outside the inviter's control: a signed-in admin of that "
        "organisation must make the enrolment (Authorization: Bearer), and it cannot create accounts",
    )
    network_ca_fingerprint: str | None = Field(
        default=None, description="SHA-256 (hex) of the network CA certificate the site will receive and check"
    )
    invitation: str = Field(
        default="",
        description="What the supplier pastes into `sangsaeng client enrol --invite`: the token and, after '#', "
        "the network CA fingerprint",
    )


class SiteCredential(SQLModel, table=True):
    """A site's registered ECDSA P-384 public key, its (unique) fingerprint and validity window."""

    __tablename__ = "site_credential"
    id: int | None = Field(default=None, primary_key=True)
    membership_id: int = Field(foreign_key="membership.id", index=True)
    algorithm: str = Field(max_length=40)
    public_key: str = Field(max_length=2000)
    fingerprint: str = Field(sa_column=Column(String(80), unique=True, index=True, nullable=False))
    not_before: datetime = Field(default_factory=utcnow, sa_column=_tz())
    not_after: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=_tz_null())
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class SiteKeyPublic(SQLModel):
    """An admitted site's public key, for the anchor, coordinator and auditors to register with the SuperLink."""

    membership_id: int
    site_name: str
    algorithm: str
    public_key: str
    fingerprint: str
    not_after: datetime


class NetworkSettings(SQLModel):
    """The network an anchor's sites join: the CA certificate that signed the fleet gateway, and its address.

    The certificate must be a CA certificate (PEM) that is valid now; the address is HOST:PORT.
    """

    ca_cert_pem: str = Field(min_length=1, max_length=20000)
    superlink_address: Annotated[
        str, StringConstraints(min_length=3, max_length=300, pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
    ] = Field(description="HOST:PORT")


class EnrolRequest(SQLModel):
    """What an enrolling site sends: the invite token, its new public key, the proof, optionally an admin account.

    The admin password is refused outside 8-128 characters; the e-mail must look like one.
    """

    invite_token: str = Field(min_length=1, max_length=200)
    public_key: str = Field(min_length=1, max_length=4000)
    proof: str = Field(
        min_length=1, max_length=400, description="base64 ECDSA-SHA256 signature of the enrolment message"
    )
    admin_email: Email | None = None
    admin_password: Password | None = None
    admin_name: str = Field(default="", max_length=100)
    network_ca_fingerprint: Sha256Hex | None = Field(
        default=None,
        description="The network CA fingerprint the invitation carried: enrolment is refused (and the invite "
        "kept) if the federation's network CA is another",
    )


class EnrolResponse(SQLModel):
    """What an enrolled site gets: its membership, its client token (shown once), the portal key to pin."""

    membership: MembershipPublic
    client_token: str
    client_token_expires_at: datetime
    portal_signing_key: str
    portal_signing_key_fingerprint: str
    network_ca_pem: str | None = Field(default=None, description="The network CA certificate (PEM), if set")
    superlink_address: str | None = Field(default=None, description="The SuperLink fleet address, HOST:PORT")


class SiteStatus(SQLModel):
    """A site's view of itself through its client token: its membership and federation."""

    membership: MembershipPublic
    federation: FederationPublic


# -- runs --------------------------------------------------------------------------------------
def _finite_or_none(values: dict[str, float | None]) -> dict[str, float | None]:
    for key, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"metric '{key}' must be a finite number or null")
    return values


Metrics = Annotated[
    dict[Annotated[str, StringConstraints(max_length=40)], float | None], AfterValidator(_finite_or_none)
]


class RoundReport(SQLModel):
    """One round of a reported run: its number (1-100000), metrics overall and per site; non-finite ones refused."""

    round: int = Field(ge=1, le=100000)
    metrics: Metrics = Field(default_factory=dict)
    per_site: dict[Annotated[str, StringConstraints(max_length=100)], Metrics] = Field(default_factory=dict)


class SitePrivacy(SQLModel):
    """One site's privacy spend in a run, as the coordinator reports it.

    Refuses an epsilon that is negative or not finite, a budget that is not positive and
    finite, a delta outside (0, 1), and a per-round epsilon that is negative or not finite.
    """

    epsilon: float = Field(ge=0)
    budget_epsilon: float = Field(gt=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    epsilon_by_round: list[float] = Field(default_factory=list, max_length=100000)

    @field_validator("epsilon", "budget_epsilon")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("epsilon_by_round")
    @classmethod
    def _finite_list(cls, values: list[float]) -> list[float]:
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError("epsilon_by_round must hold finite non-negative numbers")
        return values


# -- contribution scores (results.json "contribution", issue 16) -----------------------------------------
SHARE_TOLERANCE = 1e-6  # shares are ratios of floats: 1.0000000002 is a share of one
INPUTS_MAX_CHARS = 8000  # the run-level inputs, as JSON: enough for every recomputation input, never a payload


def _finite_number(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number or null")
    return value


FiniteOrNull = Annotated[float | None, AfterValidator(_finite_number)]


def _share(value: float) -> float:
    if not math.isfinite(value) or not -SHARE_TOLERANCE <= value <= 1 + SHARE_TOLERANCE:
        raise ValueError("data_share must be a finite number between 0 and 1")
    return min(max(value, 0.0), 1.0)


class ContributionSiteReport(SQLModel):
    """One site's scores in a run's ``contribution`` block (results.json, schema agreed with the coordinator).

    `utility` is a Shapley value in metric units (may be negative), `utility_share` that value
    over the grand coalition's gain, `leave_one_out` the metric lost without the site; all
    three are null where the method could not see single updates (secure aggregation).
    Non-finite numbers, a data share outside [0, 1] and negative counts are refused.
    """

    records: int = Field(ge=0, le=10**12)
    rounds_trained: int = Field(ge=0, le=100000)
    data_share: Annotated[float, AfterValidator(_share)]
    utility: FiniteOrNull = None
    utility_share: FiniteOrNull = None
    leave_one_out: FiniteOrNull = None
    flag: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,39}$")] | None = None
    # What the site got back: its primary metric on its own held-out rows, alone and with the network.
    alone: FiniteOrNull = None
    with_network: FiniteOrNull = None


REASON_MAX_CHARS = 500


def _cut_reason(value: Any) -> Any:
    """A reason longer than the column is cut (with an ellipsis), never the cause of a refused run."""
    if isinstance(value, str) and len(value) > REASON_MAX_CHARS:
        return value[: REASON_MAX_CHARS - 1] + "…"
    return value


def _json_inputs(value: dict[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError("inputs must hold finite numbers only") from None
    if len(text) > INPUTS_MAX_CHARS:
        raise ValueError(f"inputs are {len(text)} characters as JSON; the limit is {INPUTS_MAX_CHARS}")
    return value


class ContributionReport(SQLModel):
    """A run's ``contribution`` block: the method, its metric and inputs, the total gain, and per-site scores.

    `method` is null where no utility method could run (secure aggregation); `not_available`
    names each method not computed and why. Keys the portal does not know are ignored.
    """

    method: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,39}$")] | None = None
    metric: MetricName
    inputs: Annotated[dict[str, Any], AfterValidator(_json_inputs)] = Field(default_factory=dict)
    total_gain: FiniteOrNull = None
    not_available: dict[
        Annotated[str, StringConstraints(max_length=40)], Annotated[str, BeforeValidator(_cut_reason)]
    ] = Field(default_factory=dict, max_length=20)
    per_site: dict[Name, ContributionSiteReport] = Field(min_length=1, max_length=10000)


class RunReport(SQLModel):
    """What the coordinator reports of a run: reference, status, sites, rounds, privacy spend, contribution scores."""

    run_ref: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
    status: RunStatus = RunStatus.completed
    sites: list[Name] = Field(min_length=1, max_length=10000)
    rounds: list[RoundReport] = Field(default_factory=list, max_length=100000)
    privacy: dict[Name, SitePrivacy] | None = None
    contribution: ContributionReport | None = None  # results.json "contribution"; absent for older runs


class TrainingRun(SQLModel, table=True):
    """A run the coordinator reported: per-round metrics (the last round's as `final_metrics`) and privacy."""

    __tablename__ = "training_run"
    __table_args__ = (UniqueConstraint("federation_id", "run_ref"),)
    id: int | None = Field(default=None, primary_key=True)
    federation_id: int = Field(foreign_key="federation.id", index=True)
    run_ref: str = Field(max_length=64)
    status: RunStatus = Field(sa_column=Column(String(20), nullable=False))
    sites: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    rounds: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    final_metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    privacy: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())
    # Stamped by every report (null on rows from before migration 0008: read as created_at).
    updated_at: datetime | None = Field(default=None, sa_column=_tz_null())
    interrupted_reason: str | None = Field(default=None, max_length=500)


class RunPublic(SQLModel):
    """A run as the anchor and coordinator see it; a supplier or site sees only its own sites in it.

    `updated_at` is when its coordinator last reported it; `stalled` is true for a running run
    without a report for the portal's ``run_stall_minutes`` (its coordinator may have died).
    """

    id: int
    federation_id: int
    run_ref: str
    status: RunStatus
    sites: list[str]
    rounds: list[dict[str, Any]]
    final_metrics: dict[str, Any]
    privacy: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    stalled: bool = False
    interrupted_reason: str | None = None


class RunInterrupt(SQLModel):
    """The anchor marks a run interrupted (``POST /runs/{id}/interrupt``): why, in its own words (optional)."""

    reason: str = Field(default="", max_length=400)


class ContributionRun(SQLModel, table=True):
    """A run's contribution method, metric, inputs and total gain: the run-level part of its ledger entry."""

    __tablename__ = "contribution_run"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="training_run.id", unique=True, index=True)
    federation_id: int = Field(foreign_key="federation.id", index=True)
    method: str | None = Field(default=None, max_length=40)
    metric: str = Field(max_length=40)
    inputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    total_gain: float | None = None
    not_available: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class ContributionScore(SQLModel, table=True):
    """One site's contribution scores in one run (one row per run and site); its membership names its supplier."""

    __tablename__ = "contribution_score"
    __table_args__ = (UniqueConstraint("run_id", "site_name"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="training_run.id", index=True)
    federation_id: int = Field(foreign_key="federation.id", index=True)
    membership_id: int = Field(foreign_key="membership.id", index=True)
    site_name: str = Field(max_length=100)
    records: int = Field(sa_column=Column(BigInteger, nullable=False))
    rounds_trained: int
    data_share: float
    utility: float | None = None
    utility_share: float | None = None
    leave_one_out: float | None = None
    flag: str | None = Field(default=None, max_length=40)
    alone: float | None = None
    with_network: float | None = None


class ContributionRow(SQLModel):
    """One site's scores as the ledger shows them, and its metric alone and with the network (if measured)."""

    site: str
    records: int
    rounds_trained: int
    data_share: float
    utility: float | None
    utility_share: float | None
    leave_one_out: float | None
    flag: str | None
    alone: float | None = None
    with_network: float | None = None


class ContributionTotals(SQLModel):
    """The federation total of one run: sites scored, records, the sums of shares and utilities, the total gain."""

    sites: int
    records: int
    data_share: float
    utility: float | None
    total_gain: float | None


class OwnContribution(SQLModel):
    """A supplier's (or site's) own part of one run: its sites and their summed shares and utility."""

    sites: list[str]
    records: int
    data_share: float
    utility: float | None
    utility_share: float | None


class ReleaseRef(SQLModel):
    """A release of the run, as far as the caller may see it."""

    id: int
    version: str
    status: ReleaseStatus


class ContributionRunPublic(SQLModel):
    """One run in the ledger: method, metric, inputs, what was not available, rows, totals and the caller's own part.

    The anchor, auditors and the coordinator get every site's row and `own` null; a supplier or
    site only the rows of its own sites, the federation totals and `own`.
    """

    run_id: int
    run_ref: str
    created_at: datetime
    method: str | None
    metric: str
    inputs: dict[str, Any]
    total_gain: float | None
    not_available: dict[str, str]
    rows: list[ContributionRow]
    totals: ContributionTotals
    own: OwnContribution | None
    releases: list[ReleaseRef]


class ContributionBasis(StrEnum):
    """Which share the minimum contribution is measured on: the utility (Shapley) share or the data share."""

    utility_share = "utility_share"
    data_share = "data_share"


class ContributionPolicy(SQLModel):
    """The minimum contribution for release access: the share (null: off) and what it is measured on."""

    min_share: float | None
    basis: ContributionBasis


def _policy_share(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or not 0 < value <= 1):
        raise ValueError("must be a share in (0, 1], or null to switch the minimum off")
    return value


class ContributionPolicyUpdate(SQLModel):
    """The anchor's minimum contribution for release access; null switches it off (the default)."""

    min_share: Annotated[float | None, AfterValidator(_policy_share)] = Field(
        description="the least share of the release's run a supplier's sites must have contributed to pull it; "
        "null: no minimum",
    )
    basis: ContributionBasis = ContributionBasis.utility_share


class ReleaseAccess(SQLModel):
    """Whether the caller's organisation may pull the release under the minimum contribution, and if not why."""

    allowed: bool
    reason: str | None


class ContributionLedger(SQLModel):
    """A federation's (or one release's) contribution ledger as the caller may see it, newest run first.

    `view` is ``all`` for the anchor, auditors and the coordinator, ``own`` for a supplier or
    site; `access` is set for a supplier or site on a release's ledger.
    """

    federation_id: int
    release_id: int | None
    view: Literal["all", "own"]
    policy: ContributionPolicy
    runs: list[ContributionRunPublic]
    access: ReleaseAccess | None = None


class PrivacyEntry(BaseModel):
    """One site's spend in one run against its budget: all for anchor and auditors, its own for a supplier or site.

    A plain pydantic model, not an `SQLModel`: a federation's privacy page lists one per site and
    run (hundreds), and SQLModel's constructor costs several times pydantic's.
    """

    model_config = ConfigDict(from_attributes=True)

    run_id: int
    run_ref: str
    site: str
    epsilon: float
    budget_epsilon: float
    within_budget: bool
    epsilon_by_round: list[float]


class PrivacyReport(SQLModel, table=True):
    """A run's privacy report exactly as the coordinator signed it (Ed25519 over the report bytes)."""

    __tablename__ = "privacy_report"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="training_run.id", unique=True, index=True)
    report: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    signature: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    public_key_pem: str = Field(max_length=2000)
    sha256: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())
    # True when the signature was checked against the federation's pinned key and every epsilon
    # recomputed; rows stored before keys were pinned were checked against the key sent with them.
    verified_with_pinned_key: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, default=False, server_default=false())
    )


class PrivacyReportUpload(SQLModel):
    """What the coordinator sends to store a run's signed privacy report: the exact bytes and signature, base64."""

    report_b64: str = Field(min_length=4, description="report.json, base64 (the exact signed bytes)")
    signature_b64: str = Field(
        min_length=4, max_length=200, description="report.json.sig: raw Ed25519 signature, base64"
    )
    public_key_pem: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="coordinator.pub.pem, optional: if sent it must be the federation's pinned key; "
        "the signature is checked against the pinned key only",
    )


class PrivacyReportSummary(SQLModel):
    """A stored signed privacy report without its content: its hash, size, key fingerprint and verification."""

    run_id: int
    run_ref: str
    sha256: str
    size: int
    public_key_fingerprint: str
    signature_verified_at_upload: bool = True
    verified_with_pinned_key: bool = True
    created_at: datetime


class PrivacyReportPublic(PrivacyReportSummary):
    """A run's signed privacy report, byte-exact with signature and key, for the anchor and auditors."""

    report_b64: str
    signature_b64: str
    public_key_pem: str


# -- releases ----------------------------------------------------------------------------------
class ModelArtifact(SQLModel, table=True):
    """A release candidate's model artifact: the zip's bytes, size and SHA-256."""

    __tablename__ = "model_artifact"
    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(max_length=64, index=True)
    size: int
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())


class ReleaseCreate(SQLModel):
    """What the coordinator uploads as a candidate: the run, a semantic version, the zip and its SHA-256."""

    run_id: DbId
    version: SemVer
    artifact_sha256: Sha256Hex
    artifact_b64: str = Field(min_length=4, description="the model artifact (zip), base64")


class ModelRelease(SQLModel, table=True):
    """A release of a run's model: draft, approved, published with a signed model card, or withdrawn."""

    __tablename__ = "model_release"
    __table_args__ = (UniqueConstraint("federation_id", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    federation_id: int = Field(foreign_key="federation.id", index=True)
    run_id: int = Field(foreign_key="training_run.id", index=True)
    artifact_id: int = Field(foreign_key="model_artifact.id")
    version: str = Field(max_length=64)
    status: ReleaseStatus = Field(sa_column=Column(String(20), nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    privacy: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    artifact_sha256: str = Field(max_length=64)
    artifact_size: int
    model_card: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    signature: str | None = Field(default=None, max_length=200)
    signing_key_fingerprint: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_tz())
    approved_at: datetime | None = Field(default=None, sa_column=_tz_null())
    published_at: datetime | None = Field(default=None, sa_column=_tz_null())
    withdrawn_at: datetime | None = Field(default=None, sa_column=_tz_null())
    withdrawn_reason: str | None = Field(default=None, max_length=500)


class ReleasePublic(SQLModel):
    """A release as the caller sees it; a supplier or site sees only its own sites' privacy spend."""

    id: int
    federation_id: int
    run_id: int
    version: str
    status: ReleaseStatus
    metrics: dict[str, Any]
    privacy: dict[str, Any] | None
    artifact_sha256: str
    artifact_size: int
    model_card: dict[str, Any] | None
    signature: str | None
    signing_key_fingerprint: str | None
    created_at: datetime
    published_at: datetime | None
    withdrawn_at: datetime | None
    withdrawn_reason: str | None


class WithdrawRequest(SQLModel):
    """An anchor admin's reason for withdrawing a release (1-500 characters once stripped)."""

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class SigningKeyPublic(SQLModel):
    """The portal's release-signing public key and its fingerprint, for anyone."""

    algorithm: str = "Ed25519"
    public_key: str
    fingerprint: str


# -- audit trail ---------------------------------------------------------------------------------
class AuditEvent(SQLModel, table=True):
    """One state change. Append-only (database triggers refuse UPDATE and DELETE); hash-chained."""

    __tablename__ = "audit_event"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=_tz())
    actor: str = Field(max_length=300)
    federation_id: int | None = Field(default=None, foreign_key="federation.id", index=True)
    action: str = Field(max_length=60)
    target: str = Field(max_length=200)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditEventPublic(SQLModel):
    """One audit event with its hash-chain links, as the anchor admin and auditors read it."""

    id: int
    at: datetime
    actor: str
    federation_id: int | None
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditTrail(SQLModel):
    """A federation's audit events, newest first, and whether the whole chain holds (if not, where it breaks)."""

    events: list[AuditEventPublic]
    chain_intact: bool
    first_broken_id: int | None = None


# -- login rate limit -------------------------------------------------------------------------------
class LoginAttempt(SQLModel, table=True):
    """One failed sign-in, counted by the login rate limit while it is inside the window.

    In the database, so every worker process (and every portal host on the same database)
    counts the same failures. `key` is the SHA-256 of ``e:<e-mail>`` or ``i:<address>``: fixed
    length, whatever was typed, and no e-mail addresses kept in the clear.
    """

    __tablename__ = "login_attempt"
    __table_args__ = (Index("ix_login_attempt_key_at", "key", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(String(64), nullable=False))
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


class Message(SQLModel):
    """A plain confirmation in words, such as ``signed out``."""

    message: str


@event.listens_for(Organisation, "before_insert")
@event.listens_for(Organisation, "before_update")
def _keep_organisation_key(mapper: Any, connection: Any, target: Organisation) -> None:
    target.name_key = name_key(target.name)


@event.listens_for(Membership, "before_insert")
@event.listens_for(Membership, "before_update")
def _keep_site_key(mapper: Any, connection: Any, target: Membership) -> None:
    target.site_key = name_key(target.site_name)


__all__ = [
    "name_key",
    "utcnow",
    "as_utc",
    "OrgKind",
    "MembershipStatus",
    "ReleaseStatus",
    "TokenKind",
    "RunStatus",
    "Organisation",
    "OrganisationCreate",
    "OrganisationPublic",
    "User",
    "UserCreate",
    "UserUpdate",
    "UserPublic",
    "ApiToken",
    "TokenCreate",
    "TokenPublic",
    "TokenIssued",
    "AccessToken",
    "Federation",
    "FederationCreate",
    "FederationPublic",
    "CoordinatorKeyRegister",
    "CoordinatorKeyPublic",
    "PrivacyPolicyUpdate",
    "AuditorAssignment",
    "AuditorAssign",
    "Membership",
    "MembershipPublic",
    "Invite",
    "InviteCreate",
    "InviteIssued",
    "SiteCredential",
    "SiteKeyPublic",
    "EnrolRequest",
    "NetworkSettings",
    "EnrolResponse",
    "SiteStatus",
    "RoundReport",
    "SitePrivacy",
    "ContributionSiteReport",
    "ContributionReport",
    "RunReport",
    "TrainingRun",
    "ContributionRun",
    "ContributionScore",
    "ContributionRow",
    "ContributionTotals",
    "OwnContribution",
    "ReleaseRef",
    "ContributionRunPublic",
    "ContributionBasis",
    "ContributionPolicy",
    "ContributionPolicyUpdate",
    "ReleaseAccess",
    "ContributionLedger",
    "RunPublic",
    "PrivacyEntry",
    "PrivacyReport",
    "PrivacyReportUpload",
    "PrivacyReportSummary",
    "PrivacyReportPublic",
    "ModelArtifact",
    "ReleaseCreate",
    "ModelRelease",
    "ReleasePublic",
    "WithdrawRequest",
    "SigningKeyPublic",
    "AuditEvent",
    "AuditEventPublic",
    "AuditTrail",
    "LoginAttempt",
    "Message",
]
