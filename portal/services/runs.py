"""Training runs: the coordinator reports them; each role sees the runs, and the sites, it may."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from portal import audit
from portal.access import Principal, federation_view, own_sites, require
from portal.core.errors import BadRequest, Conflict, NotFound
from portal.models import Membership, RunPublic, RunReport, RunStatus, TrainingRun, as_utc, utcnow
from portal.services._db import commit
from portal.services.contributions import store_contribution

__all__ = ["DEFAULT_STALL_MINUTES", "interrupt_run", "report_run", "run_public", "runs_of"]

# A running run without a report for this long is shown as stalled (Settings.run_stall_minutes).
DEFAULT_STALL_MINUTES = 15

# A run in these states takes further reports from its coordinator; completed and failed runs are immutable.
_OPEN = (RunStatus.running, RunStatus.interrupted)


def report_run(session: Session, principal: Principal, federation_id: int, report: RunReport) -> TrainingRun:
    """The coordinator reports a run: per-round metrics, for DP runs the per-site privacy, and contribution scores.

    A run still "running" may be reported again under its run_ref: the report replaces the
    row's rounds, status and privacy spend so far (its progress, live in the run page). It may
    not take rounds back, change its sites or carry contribution scores before it ends. Once
    completed or failed a run is immutable: another report is refused (409). A run the anchor
    marked interrupted is reopened by its coordinator's next report (``coordinator run
    --resume``; audited as ``run.resumed``). Every report stamps ``updated_at``.
    """
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("coordinator",), "report runs")
    existing = session.exec(
        select(TrainingRun).where(TrainingRun.federation_id == federation_id, TrainingRun.run_ref == report.run_ref)
    ).first()
    if existing is not None and existing.status not in _OPEN:
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
    if report.status == RunStatus.running and report.contribution is not None:
        raise BadRequest("a running run has no contribution scores yet; report them when it ends")
    rounds = sorted((r.model_dump() for r in report.rounds), key=lambda r: r["round"])
    privacy = {k: v.model_dump() for k, v in report.privacy.items()} if report.privacy is not None else None
    resumed = existing is not None and existing.status == RunStatus.interrupted
    if existing is not None:
        run = _update_running(existing, report, rounds, privacy)
        run.interrupted_reason = None
    else:
        run = TrainingRun(
            federation_id=federation.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
            run_ref=report.run_ref,
            status=report.status,
            sites=list(report.sites),
            rounds=rounds,
            final_metrics=dict(rounds[-1]["metrics"]) if rounds else {},
            privacy=privacy,
        )
    run.updated_at = utcnow()
    session.add(run)
    session.flush()
    if report.contribution is not None:
        members = {
            m.site_name: m for m in session.exec(select(Membership).where(Membership.federation_id == federation_id))
        }
        store_contribution(session, run, report.contribution, members)
    # Audited when reported, when resumed and when it ends; the progress in between is superseded by the end.
    if existing is None or resumed or run.status != RunStatus.running:
        audit.record(
            session,
            actor=principal.label,
            action="run.reported" if existing is None else "run.resumed" if resumed else "run.updated",
            target=f"run {run.id}",
            federation_id=federation.id,
            detail={
                "run_ref": run.run_ref,
                "status": run.status,
                "rounds": len(rounds),
                "sites": run.sites,
                "dp": run.privacy is not None,
                "contribution": report.contribution.method if report.contribution is not None else None,
            },
        )
    commit(session, f"run '{report.run_ref}'")
    return run


def _update_running(
    run: TrainingRun, report: RunReport, rounds: list[dict[str, Any]], privacy: dict[str, Any] | None
) -> TrainingRun:
    """A running run's row brought to the new report: rounds only grow, the sites stay those first reported."""
    if len(rounds) < len(run.rounds):
        raise Conflict(
            f"run '{run.run_ref}' already has {len(run.rounds)} round(s) reported; a report cannot take rounds back"
        )
    if sorted(report.sites) != sorted(run.sites):
        raise Conflict(f"run '{run.run_ref}' was reported with sites {sorted(run.sites)}; its sites cannot change")
    run.status = report.status
    run.rounds = rounds
    run.final_metrics = dict(rounds[-1]["metrics"]) if rounds else {}
    run.privacy = privacy
    return run


def _updated(run: TrainingRun) -> datetime:
    return as_utc(run.updated_at or run.created_at)


def _stalled(run: TrainingRun, stall_minutes: int, now: datetime) -> bool:
    return run.status == RunStatus.running and now - _updated(run) > timedelta(minutes=stall_minutes)


def _filter_run(run: TrainingRun, sites: set[str] | None, stall_minutes: int, now: datetime) -> RunPublic:
    updated, stalled = _updated(run), _stalled(run, stall_minutes, now)
    if sites is None:
        return RunPublic.model_validate(run, from_attributes=True, update={"updated_at": updated, "stalled": stalled})
    rounds = [{**r, "per_site": {k: v for k, v in r.get("per_site", {}).items() if k in sites}} for r in run.rounds]
    privacy = {k: v for k, v in run.privacy.items() if k in sites} if run.privacy is not None else None
    return RunPublic(
        id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        federation_id=run.federation_id,
        run_ref=run.run_ref,
        status=run.status,
        sites=[s for s in run.sites if s in sites],
        rounds=rounds,
        final_metrics=run.final_metrics,
        privacy=privacy,
        created_at=run.created_at,
        interrupted_reason=run.interrupted_reason,
        updated_at=updated,
        stalled=stalled,
    )


# Built once (`portal.access`: building a query costs more than running it).
_RUNS = (
    select(TrainingRun)
    .where(col(TrainingRun.federation_id) == bindparam("federation_id"))
    .order_by(col(TrainingRun.id).desc())
)


def runs_of(
    session: Session, principal: Principal, federation_id: int, *, stall_minutes: int = DEFAULT_STALL_MINUTES
) -> list[RunPublic]:
    """Runs the caller may see: all for the anchor and coordinator; those it took part in for a supplier.

    A running run without a report for `stall_minutes` reads ``stalled``.
    """
    _, role = federation_view(session, principal, federation_id)
    require(role, ("anchor", "coordinator", "supplier", "client"), "see runs")
    runs = session.exec(_RUNS, params={"federation_id": federation_id}).all()
    sites = own_sites(session, principal, federation_id)
    now = utcnow()
    return [_filter_run(r, sites, stall_minutes, now) for r in runs if sites is None or sites & set(r.sites)]


def run_public(
    session: Session, principal: Principal, run_id: int, *, stall_minutes: int = DEFAULT_STALL_MINUTES
) -> RunPublic:
    """One run for the anchor, coordinator or a site that took part (showing only its sites); otherwise not found."""
    run = session.get(TrainingRun, run_id)
    missing = NotFound(f"run {run_id} not found")
    if run is None:
        raise missing
    _, role = federation_view(session, principal, run.federation_id, missing=missing)
    require(role, ("anchor", "coordinator", "supplier", "client"), "see runs")
    sites = own_sites(session, principal, run.federation_id)
    if sites is not None and not sites & set(run.sites):
        raise missing
    return _filter_run(run, sites, stall_minutes, utcnow())


def interrupt_run(session: Session, principal: Principal, run_id: int, reason: str = "") -> RunPublic:
    """The anchor marks a running run interrupted: its coordinator stopped reporting (audited as ``run.interrupted``).

    For a run whose coordinator died without reporting an end. It stops nothing: a coordinator
    that reports the run again (``coordinator run --resume``) reopens it. Only a running run
    can be marked; another tenant's run reads as missing.
    """
    run = session.get(TrainingRun, run_id)
    missing = NotFound(f"run {run_id} not found")
    if run is None:
        raise missing
    federation, role = federation_view(session, principal, run.federation_id, missing=missing)
    require(role, ("anchor",), "mark runs interrupted")
    if run.status != RunStatus.running:
        raise Conflict(f"run '{run.run_ref}' is {run.status}; only a running run can be marked interrupted")
    last = _updated(run)
    why = f"marked interrupted by {principal.label}; last report at {last:%Y-%m-%d %H:%M:%S} UTC"
    run.status = RunStatus.interrupted
    run.interrupted_reason = f"{why}: {reason.strip()}" if reason.strip() else why
    session.add(run)
    audit.record(
        session,
        actor=principal.label,
        action="run.interrupted",
        target=f"run {run.id}",
        federation_id=federation.id,
        detail={
            "run_ref": run.run_ref,
            "rounds": len(run.rounds),
            "last_report": last.isoformat(),
            "reason": reason.strip(),
        },  # fmt: skip
    )
    commit(session, f"run '{run.run_ref}'")
    return _filter_run(run, None, DEFAULT_STALL_MINUTES, utcnow())  # an interrupted run is never stalled
