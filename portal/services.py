"""The portal's flows: federations, invitations, enrolment, membership lifecycle, runs, releases.

Each function checks the caller's role (via `portal.access`), refuses bad state with a
`PortalError` that names the problem, records the change in the audit trail and commits.
Nothing is changed when a check fails. The API routes and web pages both call these.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from models.architectures import ARCHITECTURES
from portal import audit, crud
from portal.access import READ_ONLY, Principal, federation_view, own_sites, require
from portal.artifact import read_artifact
from portal.core.config import Settings
from portal.core.errors import (
    ArtifactError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    PolicyViolation,
    Unauthorized,
)
from portal.core.security import (
    ReleaseSigner,
    enrolment_message,
    new_token,
    parse_site_public_key,
    sha256_hex,
    token_digest,
)
from portal.models import (
    ApiToken,
    AuditEvent,
    AuditorAssignment,
    Federation,
    FederationCreate,
    Invite,
    InviteCreate,
    Membership,
    MembershipStatus,
    ModelArtifact,
    ModelRelease,
    Organisation,
    OrgKind,
    PrivacyEntry,
    PrivacyReport,
    PrivacyReportPublic,
    PrivacyReportSummary,
    PrivacyReportUpload,
    ReleaseCreate,
    ReleasePublic,
    ReleaseStatus,
    RunPublic,
    RunReport,
    SiteCredential,
    SiteKeyPublic,
    TokenKind,
    TrainingRun,
    as_utc,
    utcnow,
)
from portal.protocol import signing_payload

__all__ = [
    "create_federation",
    "assign_auditor",
    "invite_site",
    "enrol_site",
    "transition_membership",
    "memberships_of",
    "active_site_keys",
    "issue_coordinator_token",
    "revoke_token",
    "report_run",
    "runs_of",
    "run_public",
    "privacy_entries",
    "upload_privacy_report",
    "privacy_report_of",
    "privacy_reports_of",
    "create_release",
    "approve_release",
    "publish_release",
    "withdraw_release",
    "releases_of",
    "release_public",
    "release_artifact",
    "audit_trail",
    "signing_payload",
    "TRANSITIONS",
]

S = MembershipStatus
# action -> (allowed source states, target state)
TRANSITIONS: dict[str, tuple[tuple[MembershipStatus, ...], MembershipStatus]] = {
    "approve": ((S.enrolled,), S.approved),
    "reject": ((S.enrolled,), S.rejected),
    "suspend": ((S.approved, S.active), S.suspended),
    "reinstate": ((S.suspended,), S.active),
    "revoke": ((S.invited, S.enrolled, S.approved, S.active, S.suspended), S.revoked),
}
ADMITTED = (S.approved, S.active)


def _commit(session: Session, what: str) -> None:
    """Commit; a uniqueness clash from a concurrent request becomes a 409, not a 500."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"{what} conflicts with existing data (already exists?)") from None


# -- federations ------------------------------------------------------------------------------
def create_federation(session: Session, principal: Principal, data: FederationCreate) -> Federation:
    from models.tasks import builtin_tasks

    require(principal.kind, ("anchor",), "create a federation")
    if session.exec(select(Federation.id).where(Federation.name == data.name)).first() is not None:
        raise Conflict(f"a federation named '{data.name}' already exists")
    spec = builtin_tasks().get(data.task_name)
    if spec is None:
        raise BadRequest(f"unknown task '{data.task_name}' (built-in tasks: {sorted(builtin_tasks())})")
    metric = data.metric or spec.primary_metric
    if metric not in spec.metrics:
        raise BadRequest(f"metric '{metric}' is not reported for task '{spec.name}' (choose from {list(spec.metrics)})")
    federation = Federation(
        name=data.name,
        task_name=spec.name,
        description=data.description,
        anchor_org_id=principal.org.id,  # type: ignore[union-attr]
        metric=metric,
        threshold=data.threshold,
        higher_is_better=metric not in ("rmse", "mae"),
        task_spec=spec.to_dict(),
    )
    session.add(federation)
    session.flush()
    audit.record(
        session,
        actor=principal.label,
        action="federation.created",
        target=f"federation {federation.id}",
        federation_id=federation.id,
        detail={"name": federation.name, "task": spec.name, "metric": metric, "threshold": data.threshold},
    )
    _commit(session, f"federation '{data.name}'")
    return federation


def assign_auditor(session: Session, principal: Principal, federation_id: int, organisation_id: int) -> None:
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "assign auditors")
    org = session.get(Organisation, organisation_id)
    if org is None:
        raise NotFound(f"organisation {organisation_id} not found")
    if org.kind != OrgKind.auditor:
        raise BadRequest(f"organisation '{org.name}' is a {org.kind}, not an auditor organisation")
    exists = session.exec(
        select(AuditorAssignment.id).where(
            AuditorAssignment.federation_id == federation_id, AuditorAssignment.organisation_id == organisation_id
        )
    ).first()
    if exists is not None:
        raise Conflict(f"'{org.name}' is already an auditor of federation {federation_id}")
    session.add(AuditorAssignment(federation_id=federation_id, organisation_id=organisation_id))
    audit.record(
        session,
        actor=principal.label,
        action="auditor.assigned",
        target=f"organisation {org.id}",
        federation_id=federation.id,
        detail={"organisation": org.name},
    )
    _commit(session, "auditor assignment")


# -- invitations and enrolment ----------------------------------------------------------------------
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
        organisation_id=org.id,
        site_name=data.site_name,
        status=MembershipStatus.invited,  # type: ignore[arg-type]
    )
    session.add(membership)
    session.flush()
    token = new_token("ssi")
    invite = Invite(
        membership_id=membership.id,  # type: ignore[arg-type]
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
    _commit(session, f"site '{data.site_name}'")
    return token, membership


def invite_expiry(session: Session, membership_id: int) -> Any:
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
            membership_id=membership.id,  # type: ignore[arg-type]
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
    _commit(session, "enrolment")
    return membership, plain, token


# -- membership lifecycle ---------------------------------------------------------------------------
def get_membership(session: Session, principal: Principal, membership_id: int) -> tuple[Membership, str]:
    membership = session.get(Membership, membership_id)
    missing = NotFound(f"membership {membership_id} not found")
    if membership is None:
        raise missing
    _, role = federation_view(session, principal, membership.federation_id)
    if role == "auditor":
        raise Forbidden(f"{READ_ONLY}; they do not see membership details")
    sites = own_sites(session, principal, membership.federation_id)
    if sites is not None and membership.site_name not in sites:
        raise missing
    return membership, role


def transition_membership(
    session: Session, principal: Principal, membership_id: int, action: str, reason: str = ""
) -> Membership:
    """approve / reject / suspend / reinstate / revoke a site."""
    if action not in TRANSITIONS:
        raise BadRequest(f"unknown action '{action}' (choose from {sorted(TRANSITIONS)})")
    membership, role = get_membership(session, principal, membership_id)
    require(role, ("anchor",), f"{action} sites")  # type: ignore[arg-type]
    sources, target = TRANSITIONS[action]
    if membership.status not in sources:
        if membership.status == target:
            raise Conflict(f"site '{membership.site_name}' is already {target}")
        hint = " (it has not enrolled yet)" if membership.status == S.invited else ""
        raise Conflict(f"cannot {action} site '{membership.site_name}': it is {membership.status}{hint}")
    now = utcnow()
    previous = membership.status
    membership.status = target
    membership.updated_at = now
    session.add(membership)
    if target in (S.revoked, S.rejected):
        # The key leaves the admitted list at once; the site's tokens and unused invites die with it.
        for credential in session.exec(select(SiteCredential).where(SiteCredential.membership_id == membership.id)):
            if credential.revoked_at is None:
                credential.revoked_at = now
                session.add(credential)
        for token in session.exec(select(ApiToken).where(ApiToken.membership_id == membership.id)):
            if token.revoked_at is None:
                token.revoked_at = now
                session.add(token)
        for invite in session.exec(select(Invite).where(Invite.membership_id == membership.id)):
            if invite.used_at is None:
                invite.used_at = now
                session.add(invite)
    audit.record(
        session,
        actor=principal.label,
        action=f"membership.{target}",
        target=f"membership {membership.id}",
        federation_id=membership.federation_id,
        detail={"site": membership.site_name, "from": previous, "to": target, "reason": reason[:500]},
    )
    _commit(session, "membership")
    return membership


def memberships_of(session: Session, principal: Principal, federation_id: int) -> list[Membership]:
    _, role = federation_view(session, principal, federation_id)
    if role == "auditor":
        raise Forbidden(f"{READ_ONLY}; they do not see membership details")
    query = select(Membership).where(Membership.federation_id == federation_id)
    if role == "supplier":
        query = query.where(Membership.organisation_id == principal.org.id)  # type: ignore[union-attr]
    elif role == "client":
        query = query.where(Membership.id == principal.membership.id)  # type: ignore[union-attr]
    return list(session.exec(query.order_by(col(Membership.id))).all())


def active_site_keys(session: Session, principal: Principal, federation_id: int) -> list[SiteKeyPublic]:
    """Public keys of the sites admitted now (approved or active, key valid and not revoked)."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "coordinator", "auditor"), "list site keys")
    now = utcnow()
    rows = session.exec(
        select(Membership, SiteCredential)
        .join(SiteCredential, col(SiteCredential.membership_id) == col(Membership.id))
        .where(
            Membership.federation_id == federation_id,
            col(Membership.status).in_([s.value for s in ADMITTED]),
            col(SiteCredential.revoked_at).is_(None),
        )
        .order_by(col(Membership.id))
    ).all()
    return [
        SiteKeyPublic(
            membership_id=m.id,
            site_name=m.site_name,
            algorithm=c.algorithm,
            public_key=c.public_key,  # type: ignore[arg-type]
            fingerprint=c.fingerprint,
            not_after=c.not_after,
        )
        for m, c in rows
        if as_utc(c.not_before) <= now < as_utc(c.not_after)
    ]


# -- machine tokens --------------------------------------------------------------------------------
def issue_coordinator_token(
    session: Session, principal: Principal, federation_id: int, name: str, days: int
) -> tuple[str, ApiToken]:
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "issue coordinator tokens")
    plain, token = crud.issue_token(
        session, TokenKind.coordinator, lifetime=timedelta(days=days), name=name, federation_id=federation.id
    )
    audit.record(
        session,
        actor=principal.label,
        action="token.issued",
        target=f"token {token.id}",
        federation_id=federation.id,
        detail={"kind": "coordinator", "name": name, "prefix": token.prefix},
    )
    _commit(session, "token")
    return plain, token


def revoke_token(session: Session, principal: Principal, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or token.kind == TokenKind.session or token.federation_id is None:
        raise NotFound(f"token {token_id} not found")
    _, role = federation_view(session, principal, token.federation_id)
    require(role, ("anchor",), "revoke tokens")
    if token.revoked_at is not None:
        raise Conflict(f"token {token_id} is already revoked")
    token.revoked_at = utcnow()
    session.add(token)
    audit.record(
        session,
        actor=principal.label,
        action="token.revoked",
        target=f"token {token.id}",
        federation_id=token.federation_id,
        detail={"kind": token.kind, "prefix": token.prefix},
    )
    _commit(session, "token")
    return token


def tokens_of(session: Session, principal: Principal, federation_id: int) -> list[ApiToken]:
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "list tokens")
    return list(
        session.exec(select(ApiToken).where(ApiToken.federation_id == federation_id).order_by(col(ApiToken.id)))
    )


# -- runs -------------------------------------------------------------------------------------------
def report_run(session: Session, principal: Principal, federation_id: int, report: RunReport) -> TrainingRun:
    """The coordinator reports a run: per-round metrics and, for DP runs, the per-site privacy summary."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("coordinator",), "report runs")
    if session.exec(
        select(TrainingRun.id).where(TrainingRun.federation_id == federation_id, TrainingRun.run_ref == report.run_ref)
    ).first():
        raise Conflict(f"run '{report.run_ref}' has already been reported")
    if len(set(report.sites)) != len(report.sites):
        raise BadRequest("sites lists a site twice")
    known = set(session.exec(select(Membership.site_name).where(Membership.federation_id == federation_id)).all())
    unknown = sorted(set(report.sites) - known)
    if unknown:
        raise BadRequest(f"site(s) {unknown} are not members of federation {federation_id}")
    numbers = [r.round for r in report.rounds]
    if len(set(numbers)) != len(numbers):
        raise BadRequest("rounds lists a round number twice")
    if report.privacy is not None:
        extra = sorted(set(report.privacy) - set(report.sites))
        if extra:
            raise BadRequest(f"privacy names site(s) {extra} that did not take part in the run")
    rounds = sorted((r.model_dump() for r in report.rounds), key=lambda r: r["round"])
    run = TrainingRun(
        federation_id=federation.id,  # type: ignore[arg-type]
        run_ref=report.run_ref,
        status=report.status,
        sites=list(report.sites),
        rounds=rounds,
        final_metrics=dict(rounds[-1]["metrics"]) if rounds else {},
        privacy={k: v.model_dump() for k, v in report.privacy.items()} if report.privacy is not None else None,
    )
    session.add(run)
    session.flush()
    audit.record(
        session,
        actor=principal.label,
        action="run.reported",
        target=f"run {run.id}",
        federation_id=federation.id,
        detail={
            "run_ref": run.run_ref,
            "status": run.status,
            "rounds": len(rounds),
            "sites": run.sites,
            "dp": run.privacy is not None,
        },
    )
    _commit(session, f"run '{report.run_ref}'")
    return run


def _filter_run(run: TrainingRun, sites: set[str] | None) -> RunPublic:
    if sites is None:
        return RunPublic.model_validate(run, from_attributes=True)
    rounds = [{**r, "per_site": {k: v for k, v in r.get("per_site", {}).items() if k in sites}} for r in run.rounds]
    privacy = {k: v for k, v in run.privacy.items() if k in sites} if run.privacy is not None else None
    return RunPublic(
        id=run.id,
        federation_id=run.federation_id,
        run_ref=run.run_ref,
        status=run.status,  # type: ignore[arg-type]
        sites=[s for s in run.sites if s in sites],
        rounds=rounds,
        final_metrics=run.final_metrics,
        privacy=privacy,
        created_at=run.created_at,
    )


def runs_of(session: Session, principal: Principal, federation_id: int) -> list[RunPublic]:
    """Runs the caller may see: all for the anchor and coordinator; those it took part in for a supplier."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "coordinator", "supplier", "client"), "see runs")
    runs = session.exec(
        select(TrainingRun).where(TrainingRun.federation_id == federation_id).order_by(col(TrainingRun.id).desc())
    ).all()
    sites = own_sites(session, principal, federation_id)
    return [_filter_run(r, sites) for r in runs if sites is None or sites & set(r.sites)]


def run_public(session: Session, principal: Principal, run_id: int) -> RunPublic:
    run = session.get(TrainingRun, run_id)
    missing = NotFound(f"run {run_id} not found")
    if run is None:
        raise missing
    _, role = federation_view(session, principal, run.federation_id)
    require(role, ("anchor", "coordinator", "supplier", "client"), "see runs")
    sites = own_sites(session, principal, run.federation_id)
    if sites is not None and not sites & set(run.sites):
        raise missing
    return _filter_run(run, sites)


def privacy_entries(session: Session, principal: Principal, federation_id: int) -> list[PrivacyEntry]:
    """Per-site privacy spend per run: all sites for anchor and auditors, its own for a supplier."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "auditor", "supplier", "client"), "see privacy spend")
    sites = own_sites(session, principal, federation_id)
    runs = session.exec(  # only the columns needed: the per-round records can be large
        select(TrainingRun.id, TrainingRun.run_ref, TrainingRun.privacy)
        .where(TrainingRun.federation_id == federation_id, col(TrainingRun.privacy).is_not(None))
        .order_by(col(TrainingRun.id))
    ).all()
    out = []
    for run_id, run_ref, privacy in runs:
        for site, entry in sorted((privacy or {}).items()):
            if sites is not None and site not in sites:
                continue
            out.append(
                PrivacyEntry(
                    run_id=run_id,
                    run_ref=run_ref,
                    site=site,
                    epsilon=entry["epsilon"],
                    budget_epsilon=entry["budget_epsilon"],
                    within_budget=entry["epsilon"] <= entry["budget_epsilon"],
                    epsilon_by_round=entry.get("epsilon_by_round", []),
                )
            )
    return out


# -- signed privacy reports -------------------------------------------------------------------------
def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} is not valid base64") from None


def _coordinator_key(pem: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except UnicodeError:
        raise BadRequest("public_key_pem is not a PEM public key: it holds non-ASCII characters") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadRequest(f"public_key_pem is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadRequest("public_key_pem is not an Ed25519 public key")
    return key


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte Ed25519 public key, hex."""
    return sha256_hex(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _report_summary(run: TrainingRun, row: PrivacyReport) -> PrivacyReportSummary:
    key = _coordinator_key(row.public_key_pem)
    return PrivacyReportSummary(
        run_id=run.id,  # type: ignore[arg-type]
        run_ref=run.run_ref,
        sha256=row.sha256,
        size=len(row.report),
        public_key_fingerprint=key_fingerprint(key),
        created_at=row.created_at,
    )


def _run_of(session: Session, principal: Principal, run_id: int) -> tuple[TrainingRun, str]:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    _, role = federation_view(session, principal, run.federation_id)
    return run, role


def upload_privacy_report(
    session: Session, settings: Settings, principal: Principal, run_id: int, data: PrivacyReportUpload
) -> PrivacyReportSummary:
    """The coordinator stores a run's signed privacy report; the signature and the run are checked first."""
    run, role = _run_of(session, principal, run_id)
    require(role, ("coordinator",), "upload privacy reports")  # type: ignore[arg-type]
    if session.exec(select(PrivacyReport.id).where(PrivacyReport.run_id == run.id)).first() is not None:
        raise Conflict(f"run '{run.run_ref}' already has a signed privacy report; it cannot be replaced")
    if len(data.report_b64) > settings.max_upload_bytes * 4 // 3 + 8:
        raise PayloadTooLarge(f"privacy report is larger than the limit of {settings.max_upload_bytes} bytes")
    body = _b64(data.report_b64, "report_b64")
    signature = _b64(data.signature_b64, "signature_b64")
    if len(body) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"privacy report is {len(body)} bytes; the limit is {settings.max_upload_bytes}")
    if len(signature) != 64:
        raise BadRequest(f"signature_b64 decodes to {len(signature)} bytes; a raw Ed25519 signature has 64")
    key = _coordinator_key(data.public_key_pem)
    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise BadRequest("bad signature: it does not sign the exact bytes of the report under the given key") from None
    try:
        report = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the report is not UTF-8 JSON") from None
    reported = report.get("run_id") if isinstance(report, dict) else None
    if reported != run.run_ref:
        raise BadRequest(f"the report is for run_id {reported!r}, not for run {run.id} ('{run.run_ref}')")
    row = PrivacyReport(
        run_id=run.id,  # type: ignore[arg-type]
        report=body,
        signature=signature,
        public_key_pem=key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        sha256=sha256_hex(body),
    )
    session.add(row)
    session.flush()
    summary = _report_summary(run, row)
    audit.record(
        session,
        actor=principal.label,
        action="run.privacy_report_uploaded",
        target=f"run {run.id}",
        federation_id=run.federation_id,
        detail={
            "run_ref": run.run_ref,
            "sha256": summary.sha256,
            "size": summary.size,
            "key": summary.public_key_fingerprint,
            "signature_verified": True,
        },  # fmt: skip
    )
    _commit(session, f"privacy report of run '{run.run_ref}'")
    return summary


_REPORT_READERS = ("anchor", "auditor")
_REPORT_WHY = "read signed privacy reports (they hold every site's spend)"


def privacy_report_of(session: Session, principal: Principal, run_id: int) -> PrivacyReportPublic:
    """A run's signed privacy report, for the anchor and the federation's auditors."""
    run, role = _run_of(session, principal, run_id)
    require(role, _REPORT_READERS, _REPORT_WHY)  # type: ignore[arg-type]
    row = session.exec(select(PrivacyReport).where(PrivacyReport.run_id == run.id)).first()
    if row is None:
        raise NotFound(f"run {run.id} ('{run.run_ref}') has no signed privacy report")
    return PrivacyReportPublic(
        **_report_summary(run, row).model_dump(),
        report_b64=base64.b64encode(row.report).decode(),
        signature_b64=base64.b64encode(row.signature).decode(),
        public_key_pem=row.public_key_pem,
    )


def privacy_reports_of(session: Session, principal: Principal, federation_id: int) -> list[PrivacyReportSummary]:
    """Summaries of a federation's signed privacy reports (anchor and auditors)."""
    _, role = federation_view(session, principal, federation_id)
    require(role, _REPORT_READERS, _REPORT_WHY)
    rows = session.exec(
        select(TrainingRun, PrivacyReport)
        .join(PrivacyReport, col(PrivacyReport.run_id) == col(TrainingRun.id))
        .where(TrainingRun.federation_id == federation_id)
        .order_by(col(TrainingRun.id))
    ).all()
    return [_report_summary(run, row) for run, row in rows]


# -- releases ---------------------------------------------------------------------------------------
def create_release(
    session: Session, settings: Settings, principal: Principal, federation_id: int, data: ReleaseCreate
) -> ModelRelease:
    """The coordinator uploads a candidate model of a reported run: a draft release."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("coordinator",), "upload candidate models")
    run = session.get(TrainingRun, data.run_id)
    if run is None or run.federation_id != federation_id:
        raise NotFound(f"run {data.run_id} not found in federation {federation_id}")
    if len(data.artifact_b64) > settings.max_upload_bytes * 4 // 3 + 8:
        raise PayloadTooLarge(f"artifact is larger than the limit of {settings.max_upload_bytes} bytes")
    try:
        blob = base64.b64decode(data.artifact_b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("artifact_b64 is not valid base64") from None
    if len(blob) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"artifact is {len(blob)} bytes; the limit is {settings.max_upload_bytes}")
    digest = sha256_hex(blob)
    if digest != data.artifact_sha256:
        raise BadRequest(f"artifact hash mismatch: content has sha256 {digest}, request says {data.artifact_sha256}")
    content = read_artifact(blob)
    if content.task.get("name") != federation.task_name:
        raise ArtifactError(
            f"artifact is for task '{content.task.get('name')}', federation trains '{federation.task_name}'"
        )
    if session.exec(
        select(ModelRelease.id).where(ModelRelease.federation_id == federation_id, ModelRelease.version == data.version)
    ).first():
        raise Conflict(f"version {data.version} already exists in federation {federation_id}")
    artifact = ModelArtifact(sha256=digest, size=len(blob), content=blob)
    session.add(artifact)
    session.flush()
    release = ModelRelease(
        federation_id=federation_id,
        run_id=run.id,
        artifact_id=artifact.id,
        version=data.version,  # type: ignore[arg-type]
        status=ReleaseStatus.draft,
        metrics=dict(run.final_metrics),
        privacy=run.privacy,
        artifact_sha256=digest,
        artifact_size=len(blob),
    )
    session.add(release)
    session.flush()
    audit.record(
        session,
        actor=principal.label,
        action="release.created",
        target=f"release {release.id}",
        federation_id=federation_id,
        detail={"version": data.version, "run_id": run.id, "sha256": digest, "size": len(blob)},
    )
    _commit(session, f"release {data.version}")
    return release


def _get_release(session: Session, principal: Principal, release_id: int) -> tuple[ModelRelease, Federation, str]:
    release = session.get(ModelRelease, release_id)
    missing = NotFound(f"release {release_id} not found")
    if release is None:
        raise missing
    federation, role = federation_view(session, principal, release.federation_id)
    if role in ("supplier", "client") and release.status not in (ReleaseStatus.published, ReleaseStatus.withdrawn):
        raise missing
    return release, federation, role


def release_gate(session: Session, release: ModelRelease, federation: Federation) -> None:
    """Refuse (`PolicyViolation`) a release whose run broke a privacy policy or misses the metric threshold."""
    run = session.get(TrainingRun, release.run_id)
    assert run is not None
    if run.status != "completed":
        raise PolicyViolation(f"release {release.version}: its run '{run.run_ref}' is {run.status}, not completed")
    if run.privacy is not None:
        for site in run.sites:
            entry = run.privacy.get(site)
            if entry is None:
                raise PolicyViolation(f"release {release.version}: site '{site}' has no privacy record in a DP run")
            if entry["epsilon"] > entry["budget_epsilon"]:
                raise PolicyViolation(
                    f"release {release.version}: site '{site}' spent epsilon {entry['epsilon']:g} "
                    f"over its budget {entry['budget_epsilon']:g}"
                )
    value = run.final_metrics.get(federation.metric)
    if value is None:
        raise PolicyViolation(f"release {release.version}: its run reports no final '{federation.metric}'")
    ok = value >= federation.threshold if federation.higher_is_better else value <= federation.threshold
    if not ok:
        sign = ">=" if federation.higher_is_better else "<="
        raise PolicyViolation(
            f"release {release.version}: {federation.metric} {value:.4g} does not meet the threshold "
            f"{sign} {federation.threshold:g}"
        )


def approve_release(session: Session, principal: Principal, release_id: int) -> ModelRelease:
    release, federation, role = _get_release(session, principal, release_id)
    require(role, ("anchor",), "approve releases")  # type: ignore[arg-type]
    if release.status != ReleaseStatus.draft:
        raise Conflict(f"release {release.version} is {release.status}; only a draft can be approved")
    release_gate(session, release, federation)
    release.status = ReleaseStatus.approved
    release.approved_at = utcnow()
    session.add(release)
    audit.record(
        session,
        actor=principal.label,
        action="release.approved",
        target=f"release {release.id}",
        federation_id=federation.id,
        detail={"version": release.version},
    )
    _commit(session, "release")
    return release


def model_card(
    session: Session, release: ModelRelease, federation: Federation, signer: ReleaseSigner
) -> dict[str, Any]:
    """What a release says about itself. Holds aggregates only: no site's privacy spend or metrics."""
    run = session.get(TrainingRun, release.run_id)
    stored = session.get(ModelArtifact, release.artifact_id)
    assert run is not None and stored is not None
    content = read_artifact(stored.content)  # checked at upload; read again for what the card says of it
    privacy = run.privacy
    return {
        "federation": {"id": federation.id, "name": federation.name},
        "task": federation.task_spec,
        "version": release.version,
        "run": {"id": run.id, "run_ref": run.run_ref, "rounds": len(run.rounds), "sites": len(run.sites)},
        "metrics": release.metrics,
        "evaluation": {
            "metric": federation.metric,
            "threshold": federation.threshold,
            "value": release.metrics.get(federation.metric),
            "higher_is_better": federation.higher_is_better,
        },
        "privacy": (
            {
                "differential_privacy": True,
                "sites": len(privacy),
                "all_within_budget": True,
                "max_epsilon": max(e["epsilon"] for e in privacy.values()) if privacy else 0.0,
            }
            if privacy is not None
            else {"differential_privacy": False}
        ),
        "artifact": {"sha256": release.artifact_sha256, "size": release.artifact_size, "format": "sangsaeng-model/1"},
        "architecture": {
            "model": content.model,
            "hidden": content.hidden,
            "description": ARCHITECTURES[content.model],
            "parameters": int(sum(w.size for w in content.weights)),
        },
        "signing_key_fingerprint": signer.fingerprint,
        "published_at": utcnow().replace(microsecond=0).isoformat(),
    }


def publish_release(session: Session, principal: Principal, signer: ReleaseSigner, release_id: int) -> ModelRelease:
    release, federation, role = _get_release(session, principal, release_id)
    require(role, ("anchor",), "publish releases")  # type: ignore[arg-type]
    if release.status == ReleaseStatus.published:
        raise Conflict(f"release {release.version} is already published")
    if release.status != ReleaseStatus.approved:
        raise Conflict(f"release {release.version} is {release.status}; approve it before publishing")
    release_gate(session, release, federation)
    card = model_card(session, release, federation, signer)
    release.model_card = card
    release.signature = signer.sign(signing_payload(card))
    release.signing_key_fingerprint = signer.fingerprint
    release.status = ReleaseStatus.published
    release.published_at = utcnow()
    session.add(release)
    audit.record(
        session,
        actor=principal.label,
        action="release.published",
        target=f"release {release.id}",
        federation_id=federation.id,
        detail={
            "version": release.version,
            "sha256": release.artifact_sha256,
            "signature": release.signature,
            "key": signer.fingerprint,
        },
    )
    _commit(session, "release")
    return release


def withdraw_release(session: Session, principal: Principal, release_id: int, reason: str) -> ModelRelease:
    release, federation, role = _get_release(session, principal, release_id)
    require(role, ("anchor",), "withdraw releases")  # type: ignore[arg-type]
    if release.status == ReleaseStatus.withdrawn:
        raise Conflict(f"release {release.version} is already withdrawn")
    release.status = ReleaseStatus.withdrawn
    release.withdrawn_at = utcnow()
    release.withdrawn_reason = reason
    session.add(release)
    audit.record(
        session,
        actor=principal.label,
        action="release.withdrawn",
        target=f"release {release.id}",
        federation_id=federation.id,
        detail={"version": release.version, "reason": reason},
    )
    _commit(session, "release")
    return release


def release_public(session: Session, principal: Principal, release: ModelRelease) -> ReleasePublic:
    public = ReleasePublic.model_validate(release, from_attributes=True)
    sites = own_sites(session, principal, release.federation_id)
    if sites is not None and public.privacy is not None:
        public.privacy = {k: v for k, v in public.privacy.items() if k in sites}
    return public


def releases_of(session: Session, principal: Principal, federation_id: int) -> list[ReleasePublic]:
    _, role = federation_view(session, principal, federation_id)
    query = select(ModelRelease).where(ModelRelease.federation_id == federation_id)
    if role in ("supplier", "client"):
        query = query.where(
            col(ModelRelease.status).in_([ReleaseStatus.published.value, ReleaseStatus.withdrawn.value])
        )
    releases = session.exec(query.order_by(col(ModelRelease.id).desc())).all()
    return [release_public(session, principal, r) for r in releases]


def get_release_public(session: Session, principal: Principal, release_id: int) -> ReleasePublic:
    release, _, _ = _get_release(session, principal, release_id)
    return release_public(session, principal, release)


def release_artifact(session: Session, principal: Principal, release_id: int) -> tuple[ModelRelease, bytes]:
    """The artifact bytes: any status for the anchor, coordinator and auditors; published only for sites."""
    release, _, role = _get_release(session, principal, release_id)
    if role in ("supplier", "client"):
        if release.status == ReleaseStatus.withdrawn:
            raise Gone(f"release {release.version} was withdrawn: {release.withdrawn_reason}")
        admitted = session.exec(
            select(Membership.id).where(
                Membership.federation_id == release.federation_id,
                col(Membership.status).in_([s.value for s in ADMITTED]),
                Membership.id == principal.membership.id  # type: ignore[union-attr]
                if role == "client"
                else Membership.organisation_id == principal.org.id,  # type: ignore[union-attr]
            )
        ).first()
        if admitted is None:
            raise Forbidden("only approved or active sites may download releases")
    artifact = session.get(ModelArtifact, release.artifact_id)
    assert artifact is not None
    return release, artifact.content


# -- audit -----------------------------------------------------------------------------------------
def audit_trail(
    session: Session, principal: Principal, federation_id: int, limit: int = 500
) -> tuple[list[AuditEvent], int | None]:
    """A federation's audit events (newest first, up to `limit`) and the chain check over all of them."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "auditor"), "read the audit trail")
    events = list(
        session.exec(select(AuditEvent).where(AuditEvent.federation_id == federation_id).order_by(col(AuditEvent.id)))
    )
    broken = audit.verify_chain(events)
    return list(reversed(events))[:limit], broken
