"""Privacy: per-site spend per run, and the coordinator's signed privacy reports."""

from __future__ import annotations

import base64
import binascii
import json
import math
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Text, bindparam, cast
from sqlmodel import Session, col, select

from portal import audit
from portal.access import Principal, Role, federation_view, own_sites, require
from portal.core.config import Settings
from portal.core.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, UnprocessableContent
from portal.core.security import sha256_hex
from portal.models import (
    Federation,
    PrivacyEntry,
    PrivacyReport,
    PrivacyReportPublic,
    PrivacyReportSummary,
    PrivacyReportUpload,
    TrainingRun,
)
from portal.services._db import commit
from portal.services.privacy_policy import KEY_ROUTE, pinned_key
from privacy.errors import ReportInvalid
from privacy.report import REL_TOLERANCE, check_epsilons, check_record_unit
from sangsaeng import signing
from sangsaeng.errors import KeyFormatError
from sangsaeng.signing import Ed25519PublicKey, fingerprint, load_public_pem, public_pem, verify

_ENTRIES = TypeAdapter(list[PrivacyEntry])


# Only the columns needed (the per-round records can be large), the spend as its stored JSON text (decoded once
# per distinct text, `_run_entries`); built once (`portal.access`).
_RUN_PRIVACY = (
    select(TrainingRun.id, TrainingRun.run_ref, cast(TrainingRun.privacy, Text))
    .where(col(TrainingRun.federation_id) == bindparam("federation_id"), col(TrainingRun.privacy).is_not(None))
    .order_by(col(TrainingRun.id))
)


@lru_cache(maxsize=4096)
def _run_entries(run_id: int, run_ref: str, stored: str | None) -> tuple[tuple[str, PrivacyEntry], ...]:
    """One run's entries, by site name, from its stored privacy JSON text.

    Keyed by the text itself, so a run whose spend changes (a running run's next report) is
    decoded afresh, and a cached answer is always that of the text the database holds now.
    Decoding and validating a federation's spend on every request cost a third of the route's
    CPU. The entries are shared between requests and never changed.
    """
    privacy = json.loads(stored) if stored is not None else None
    out = [
        {
            "run_id": run_id,
            "run_ref": run_ref,
            "site": site,
            "epsilon": entry["epsilon"],
            "budget_epsilon": entry["budget_epsilon"],
            "within_budget": entry["epsilon"] <= entry["budget_epsilon"],
            "epsilon_by_round": entry.get("epsilon_by_round", []),
        }
        for site, entry in sorted((privacy or {}).items())
    ]
    # Built in pydantic's core, not one constructor call per entry.
    return tuple((e.site, e) for e in _ENTRIES.validate_python(out))


def privacy_entries(session: Session, principal: Principal, federation_id: int) -> list[PrivacyEntry]:
    """Per-site privacy spend per run: all sites for anchor and auditors, its own for a supplier."""
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "auditor", "supplier", "client"), "see privacy spend")
    sites = own_sites(session, principal, federation_id)
    runs = session.exec(_RUN_PRIVACY, params={"federation_id": federation_id}).all()
    return [
        entry
        for run_id, run_ref, stored in runs
        for site, entry in _run_entries(run_id, run_ref, stored)
        if sites is None or site in sites
    ]


# -- signed privacy reports -------------------------------------------------------------------------
def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} is not valid base64") from None


def _coordinator_key(pem: str) -> signing.Ed25519PublicKey:
    """The coordinator's Ed25519 public key from the upload; a malformed one is a 400 naming the field."""
    try:
        return load_public_pem(pem, source="public_key_pem")
    except KeyFormatError as exc:
        raise BadRequest(str(exc)) from None


def _report_summary(run: TrainingRun, row: PrivacyReport) -> PrivacyReportSummary:
    key = _coordinator_key(row.public_key_pem)
    return PrivacyReportSummary(
        run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        run_ref=run.run_ref,
        sha256=row.sha256,
        size=len(row.report),
        public_key_fingerprint=fingerprint(key),
        verified_with_pinned_key=row.verified_with_pinned_key,
        created_at=row.created_at,
    )


def _run_of(session: Session, principal: Principal, run_id: int) -> tuple[TrainingRun, Role]:
    run = session.get(TrainingRun, run_id)
    missing = NotFound(f"run {run_id} not found")
    if run is None:
        raise missing
    _, role = federation_view(session, principal, run.federation_id, missing=missing)
    return run, role


def upload_privacy_report(
    session: Session, settings: Settings, principal: Principal, run_id: int, data: PrivacyReportUpload
) -> PrivacyReportSummary:
    """The coordinator stores a run's signed privacy report, once it holds up as `privacy verify` checks it.

    Refused unless: the federation pins a coordinator key, the signature verifies over the exact
    report bytes under that key (a key sent along must be it), the report is this run's, every
    epsilon recomputes from its recorded noise, sampling rate and steps, and the per-site
    epsilons and budgets are those the run recorded. A report over budget is stored (it is the
    evidence); the release gate refuses its run.
    """
    run, role = _run_of(session, principal, run_id)
    require(role, ("coordinator",), "upload privacy reports")
    federation = session.get(Federation, run.federation_id)
    assert federation is not None
    if session.exec(select(PrivacyReport.id).where(PrivacyReport.run_id == run.id)).first() is not None:
        raise Conflict(f"run '{run.run_ref}' already has a signed privacy report; it cannot be replaced")
    if run.status in ("running", "interrupted"):  # its spend may still grow: the signed report comes at its end
        raise Conflict(f"run '{run.run_ref}' is still {run.status}; upload its signed privacy report when it ends")
    if len(data.report_b64) > settings.max_upload_bytes * 4 // 3 + 8:
        raise PayloadTooLarge(f"privacy report is larger than the limit of {settings.max_upload_bytes} bytes")
    body = _b64(data.report_b64, "report_b64")
    signature = _b64(data.signature_b64, "signature_b64")
    if len(body) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"privacy report is {len(body)} bytes; the limit is {settings.max_upload_bytes}")
    if len(signature) != 64:
        raise BadRequest(f"signature_b64 decodes to {len(signature)} bytes; a raw Ed25519 signature has 64")
    key = _pinned_key_for_upload(federation, data.public_key_pem)
    pinned = federation.coordinator_key_fingerprint
    if not verify(key, signature, body):
        raise BadRequest(
            f"bad signature: it does not sign the exact bytes of the report under federation {federation.id}'s "
            f"pinned coordinator key {pinned}"
        )
    try:
        report = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the report is not UTF-8 JSON") from None
    reported = report.get("run_id") if isinstance(report, dict) else None
    if reported != run.run_ref:
        raise BadRequest(f"the report is for run_id {reported!r}, not for run {run.id} ('{run.run_ref}')")
    try:
        check_epsilons(report)
        check_record_unit(report)  # a sequence task's epsilons are per window, and its report must say so
    except ReportInvalid as exc:
        raise UnprocessableContent(f"the signed privacy report does not verify: {exc}") from None
    _agrees_with_run(run, report)
    row = PrivacyReport(
        run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        report=body,
        signature=signature,
        public_key_pem=public_pem(key).decode("ascii"),
        sha256=sha256_hex(body),
        verified_with_pinned_key=True,
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
            "verified_with_pinned_key": True,
        },  # fmt: skip
    )
    commit(session, f"privacy report of run '{run.run_ref}'")
    return summary


def _pinned_key_for_upload(federation: Federation, sent_pem: str | None) -> Ed25519PublicKey:
    """The key a report must verify under: the federation's pinned one; a key sent along must be it."""
    key = pinned_key(federation)
    if key is None:
        raise Conflict(
            f"federation {federation.id} has no pinned coordinator signing key, so no privacy report can be "
            "verified: the anchor pins it with `sangsaeng portal coordinator-token --public-key coordinator.pub.pem` "
            f"or {KEY_ROUTE.format(federation_id=federation.id)}"
        )
    if sent_pem is not None:
        sent = fingerprint(_coordinator_key(sent_pem))
        if sent != federation.coordinator_key_fingerprint:
            raise Conflict(
                f"the report comes with coordinator key {sent}, but federation {federation.id} pins "
                f"{federation.coordinator_key_fingerprint}; reports verify against the pinned key only "
                f"(a new coordinator key is the anchor's rotation: {KEY_ROUTE.format(federation_id=federation.id)})"
            )
    return key


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=1e-9)


def _agrees_with_run(run: TrainingRun, report: dict[str, Any]) -> None:
    """Refuse (`UnprocessableContent`) a signed report whose per-site privacy contradicts the run's record."""
    signed = report.get("sites") or {}
    label = f"run '{run.run_ref}'"
    if run.privacy is None:
        if signed:
            raise UnprocessableContent(
                f"{label} was reported without privacy data, but its signed privacy report records DP "
                f"for site(s) {sorted(signed)}"
            )
        return
    extra = sorted(set(signed) - set(run.privacy))
    if extra:
        raise UnprocessableContent(
            f"the signed privacy report records site(s) {extra} for which {label} recorded no privacy"
        )
    for site, recorded in sorted(run.privacy.items()):
        entry = signed.get(site)
        if entry is None:
            raise UnprocessableContent(
                f"{label} records privacy for site '{site}', which its signed privacy report does not have"
            )
        for field in ("epsilon", "budget_epsilon"):
            value = entry.get(field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise UnprocessableContent(f"site '{site}': the signed privacy report has no numeric {field}")
            if not _close(float(value), float(recorded[field])):
                raise UnprocessableContent(
                    f"site '{site}': {label} records {field} {recorded[field]:g}, its signed privacy report "
                    f"{entry[field]:g}"
                )
        by_round = [float(r["epsilon"]) for r in entry.get("rounds", [])]
        claimed = recorded.get("epsilon_by_round") or []
        if claimed and (len(claimed) != len(by_round) or not all(map(_close, claimed, by_round))):
            raise UnprocessableContent(
                f"site '{site}': {label} records epsilon by round {claimed}, its signed privacy report {by_round}"
            )


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
