"""Model releases: candidate upload, the release gate, approval, signed publication, withdrawal, download."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from models.architectures import ARCHITECTURES
from portal import audit
from portal.access import Principal, Role, federation_view, own_sites, require
from portal.artifact import describe_inputs, read_artifact
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
)
from portal.core.security import ReleaseSigner, sha256_hex
from portal.models import (
    Federation,
    Membership,
    ModelArtifact,
    ModelRelease,
    PrivacyReport,
    ReleaseCreate,
    ReleasePublic,
    ReleaseStatus,
    TrainingRun,
    utcnow,
)
from portal.protocol import signing_payload
from portal.services._db import commit
from portal.services.contributions import require_contribution
from portal.services.memberships import ADMITTED
from privacy.errors import ReportInvalid
from privacy.report import REL_TOLERANCE, check_epsilons
from sangsaeng.signing import load_public_pem, verify

__all__ = [
    "create_release",
    "release_gate",
    "approve_release",
    "model_card",
    "publish_release",
    "withdraw_release",
    "release_public",
    "releases_of",
    "get_release_public",
    "release_artifact",
]


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
        run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        artifact_id=artifact.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        version=data.version,
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
    commit(session, f"release {data.version}")
    return release


def _get_release(session: Session, principal: Principal, release_id: int) -> tuple[ModelRelease, Federation, Role]:
    release = session.get(ModelRelease, release_id)
    missing = NotFound(f"release {release_id} not found")
    if release is None:
        raise missing
    federation, role = federation_view(session, principal, release.federation_id, missing=missing)
    if role in ("supplier", "client") and release.status not in (ReleaseStatus.published, ReleaseStatus.withdrawn):
        raise missing
    return release, federation, role


def _verified_report(session: Session, run: TrainingRun) -> tuple[PrivacyReport | None, dict[str, Any] | None]:
    """The run's stored signed privacy report and, if it was verified against the pinned key, its content.

    The signature and every epsilon are checked again here, so the gate decides from what
    verifies now, not from a flag.
    """
    row = session.exec(select(PrivacyReport).where(PrivacyReport.run_id == run.id)).first()
    if row is None or not row.verified_with_pinned_key:
        return row, None
    key = load_public_pem(row.public_key_pem, source=f"the key of run '{run.run_ref}'s privacy report")
    if not verify(key, row.signature, row.report):
        raise PolicyViolation(f"run '{run.run_ref}': its stored signed privacy report no longer verifies")
    report = json.loads(row.report)
    try:
        check_epsilons(report)
    except ReportInvalid as exc:
        raise PolicyViolation(f"run '{run.run_ref}': its stored signed privacy report does not verify: {exc}") from None
    return row, report


def _gate_on_report(release: ModelRelease, federation: Federation, run: TrainingRun, report: dict[str, Any]) -> None:
    """Every site of the run in the signed report, within its budget and the federation's DP policy."""
    sites = report.get("sites") or {}
    policy = federation.dp_max_epsilon
    if not sites and policy is None:  # no record-level DP, and the federation requires none
        return
    for site in run.sites:
        entry = sites.get(site)
        if entry is None:
            raise PolicyViolation(
                f"release {release.version}: site '{site}' has no record in run '{run.run_ref}'s signed privacy report"
            )
        epsilon, budget = float(entry["epsilon"]), float(entry["budget_epsilon"])
        if epsilon > budget * (1 + REL_TOLERANCE):
            raise PolicyViolation(
                f"release {release.version}: site '{site}' spent epsilon {epsilon:g} over its budget {budget:g} "
                "(signed privacy report)"
            )
        if policy is not None and epsilon > policy * (1 + REL_TOLERANCE):
            raise PolicyViolation(
                f"release {release.version}: site '{site}' spent epsilon {epsilon:g}, over the federation's DP "
                f"policy of at most {policy:g} (signed privacy report)"
            )


def release_gate(session: Session, release: ModelRelease, federation: Federation) -> None:
    """Refuse (`PolicyViolation`) a release whose run broke a privacy policy or misses the metric threshold.

    Privacy is decided from the run's signed privacy report when one verified against the
    pinned coordinator key is stored. A DP federation (one with a DP policy) cannot release
    without one. Only in a federation without a DP policy, for a run without such a report,
    does the gate fall back to the per-site privacy the run recorded.
    """
    run = session.get(TrainingRun, release.run_id)
    assert run is not None
    if run.status != "completed":
        raise PolicyViolation(f"release {release.version}: its run '{run.run_ref}' is {run.status}, not completed")
    row, report = _verified_report(session, run)
    if report is not None:
        _gate_on_report(release, federation, run, report)
    elif federation.dp_max_epsilon is not None:
        why = (
            "has no signed privacy report"
            if row is None
            else "has a signed privacy report stored before the federation pinned a coordinator key"
        )
        raise PolicyViolation(
            f"release {release.version}: federation {federation.id} requires DP (at most epsilon "
            f"{federation.dp_max_epsilon:g} per site), and run '{run.run_ref}' {why} verified against the pinned "
            "coordinator key"
        )
    elif run.privacy is not None:
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
    """The anchor admin approves a draft release; refused unless it passes the release gate."""
    release, federation, role = _get_release(session, principal, release_id)
    require(role, ("anchor",), "approve releases")
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
    commit(session, "release")
    return release


def model_card(
    session: Session, release: ModelRelease, federation: Federation, signer: ReleaseSigner
) -> dict[str, Any]:
    """What a release says about itself. Holds aggregates only: no site's privacy spend or metrics."""
    run = session.get(TrainingRun, release.run_id)
    stored = session.get(ModelArtifact, release.artifact_id)
    assert run is not None and stored is not None
    content = read_artifact(stored.content)  # checked at upload; read again for what the card says of it
    row, report = _verified_report(session, run)
    privacy = run.privacy
    if report is not None and report.get("sites"):  # the gate decided from the signed report: so does the card
        privacy = report["sites"]
    return {
        "federation": {"id": federation.id, "name": federation.name},
        "task": federation.task_spec,
        # What the model reads and gives, from the artifact itself: kind, classes, window, input columns.
        **describe_inputs(content),
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
                "signed_report_sha256": row.sha256 if report is not None and row is not None else None,
                "dp_policy_max_epsilon": federation.dp_max_epsilon,
            }
            if privacy is not None
            else {"differential_privacy": False}
        ),
        "artifact": {"sha256": release.artifact_sha256, "size": release.artifact_size, "format": "sangsaeng-model/1"},
        # The decision threshold the federation chose from the sites' merged held-out histograms (binary tasks).
        **({"operating_point": content.operating_point} if content.operating_point is not None else {}),
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
    """The anchor admin publishes an approved release: the gate again, then the model card signed with `signer`."""
    release, federation, role = _get_release(session, principal, release_id)
    require(role, ("anchor",), "publish releases")
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
    commit(session, "release")
    return release


def withdraw_release(session: Session, principal: Principal, release_id: int, reason: str) -> ModelRelease:
    """The anchor admin withdraws a release with a reason; sites can no longer download it."""
    release, federation, role = _get_release(session, principal, release_id)
    require(role, ("anchor",), "withdraw releases")
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
    commit(session, "release")
    return release


def release_public(session: Session, principal: Principal, release: ModelRelease) -> ReleasePublic:
    """The public view of a release; a supplier or site sees only its own sites' privacy spend."""
    return _release_public(release, own_sites(session, principal, release.federation_id))


def _release_public(release: ModelRelease, sites: set[str] | None) -> ReleasePublic:
    """`release_public` with the caller's `own_sites` in the release's federation already looked up."""
    public = ReleasePublic.model_validate(release, from_attributes=True)
    if sites is not None and public.privacy is not None:
        public.privacy = {k: v for k, v in public.privacy.items() if k in sites}
    return public


# A federation's releases, newest first, built once (`portal.access`: building one costs more than running it):
# every release for the anchor, coordinator and auditors, only published or withdrawn ones for sites.
_RELEASES = select(ModelRelease).where(col(ModelRelease.federation_id) == bindparam("federation_id"))
_RELEASES_SEEN = {
    "all": _RELEASES.order_by(col(ModelRelease.id).desc()),
    "sites": _RELEASES.where(
        col(ModelRelease.status).in_([ReleaseStatus.published.value, ReleaseStatus.withdrawn.value])
    ).order_by(col(ModelRelease.id).desc()),
}


def releases_of(session: Session, principal: Principal, federation_id: int) -> list[ReleasePublic]:
    """A federation's releases, newest first: all for anchor, coordinator, auditors; published/withdrawn for sites."""
    _, role = federation_view(session, principal, federation_id)
    query = _RELEASES_SEEN["sites" if role in ("supplier", "client") else "all"]
    releases = session.exec(query, params={"federation_id": federation_id}).all()
    sites = own_sites(session, principal, federation_id)  # once, not once per release
    return [_release_public(r, sites) for r in releases]


def get_release_public(session: Session, principal: Principal, release_id: int) -> ReleasePublic:
    """One release as the caller may see it (drafts and approved ones are not found for sites)."""
    release, _, _ = _get_release(session, principal, release_id)
    return release_public(session, principal, release)


def release_artifact(session: Session, principal: Principal, release_id: int) -> tuple[ModelRelease, bytes]:
    """The artifact bytes: any status for the anchor, coordinator and auditors; published only for sites.

    A site (or supplier) must be admitted, and meet the federation's minimum contribution if the
    anchor set one (`portal.services.contributions.require_contribution`).
    """
    release, federation, role = _get_release(session, principal, release_id)
    if role in ("supplier", "client"):
        if release.status == ReleaseStatus.withdrawn:
            raise Gone(f"release {release.version} was withdrawn: {release.withdrawn_reason}")
        admitted = session.exec(
            select(Membership.id).where(
                Membership.federation_id == release.federation_id,
                col(Membership.status).in_([s.value for s in ADMITTED]),
                Membership.id == principal.site.id
                if role == "client"
                else Membership.organisation_id == principal.org_id,
            )
        ).first()
        if admitted is None:
            raise Forbidden("only approved or active sites may download releases")
        org_id = principal.site.organisation_id if role == "client" else principal.org_id
        require_contribution(session, federation, release, org_id)  # the anchor's minimum, if it set one
    artifact = session.get(ModelArtifact, release.artifact_id)
    assert artifact is not None
    return release, artifact.content
