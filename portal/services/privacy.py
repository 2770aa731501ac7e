"""Privacy: per-site spend per run, and the coordinator's signed privacy reports."""

from __future__ import annotations

import base64
import binascii
import json

from sqlmodel import Session, col, select

from portal import audit
from portal.access import Principal, Role, federation_view, own_sites, require
from portal.core.config import Settings
from portal.core.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from portal.core.security import sha256_hex
from portal.models import (
    PrivacyEntry,
    PrivacyReport,
    PrivacyReportPublic,
    PrivacyReportSummary,
    PrivacyReportUpload,
    TrainingRun,
)
from portal.services._db import commit
from sangsaeng import signing
from sangsaeng.errors import KeyFormatError

__all__ = ["privacy_entries", "upload_privacy_report", "privacy_report_of", "privacy_reports_of"]


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
                    run_id=run_id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
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


def _coordinator_key(pem: str) -> signing.Ed25519PublicKey:
    """The coordinator's Ed25519 public key from the upload; a malformed one is a 400 naming the field."""
    try:
        return signing.load_public_pem(pem, source="public_key_pem")
    except KeyFormatError as exc:
        raise BadRequest(str(exc)) from exc


def _report_summary(run: TrainingRun, row: PrivacyReport) -> PrivacyReportSummary:
    key = _coordinator_key(row.public_key_pem)
    return PrivacyReportSummary(
        run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        run_ref=run.run_ref,
        sha256=row.sha256,
        size=len(row.report),
        public_key_fingerprint=signing.fingerprint(key),
        created_at=row.created_at,
    )


def _run_of(session: Session, principal: Principal, run_id: int) -> tuple[TrainingRun, Role]:
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
    require(role, ("coordinator",), "upload privacy reports")
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
    if not signing.verify(key, signature, body):
        raise BadRequest("bad signature: it does not sign the exact bytes of the report under the given key")
    try:
        report = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the report is not UTF-8 JSON") from None
    reported = report.get("run_id") if isinstance(report, dict) else None
    if reported != run.run_ref:
        raise BadRequest(f"the report is for run_id {reported!r}, not for run {run.id} ('{run.run_ref}')")
    row = PrivacyReport(
        run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        report=body,
        signature=signature,
        public_key_pem=signing.public_pem(key).decode(),
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
    commit(session, f"privacy report of run '{run.run_ref}'")
    return summary


_REPORT_READERS: tuple[Role, ...] = ("anchor", "auditor")
_REPORT_WHY = "read signed privacy reports (they hold every site's spend)"


def privacy_report_of(session: Session, principal: Principal, run_id: int) -> PrivacyReportPublic:
    """A run's signed privacy report, for the anchor and the federation's auditors."""
    run, role = _run_of(session, principal, run_id)
    require(role, _REPORT_READERS, _REPORT_WHY)
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
