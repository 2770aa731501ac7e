"""The contribution ledger (issue 16): each run's scores per site, and the minimum contribution for release access.

The coordinator's run report carries results.json's ``contribution`` block; `store_contribution`
keeps it with the run. Who sees what (`portal.access.own_sites` decides the sites):

- the anchor, the federation's auditors and its coordinator: every site's row, method and inputs;
- a supplier (or one of its sites): the rows of its own sites, its summed share and the
  federation totals, never another supplier's row or name. Free text the coordinator wrote
  (inputs, the reasons a method was not available) that names another site or organisation of
  the federation is withheld from it.

The anchor may set a minimum contribution (`set_contribution_policy`, default off). A supplier
whose sites' share of a release's run is below it cannot pull that release (`require_contribution`).
The rule applies only to a run whose scores include the chosen share: a run without scores, or a
secure-aggregation run on the utility share, has no score to fall below. In a scored run, a
supplier with no row contributed nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from sqlmodel import Session, col, select

from portal import audit
from portal.access import Principal, federation_view, own_sites, require
from portal.core.errors import BadRequest, Forbidden, NotFound
from portal.models import (
    ContributionBasis,
    ContributionLedger,
    ContributionPolicy,
    ContributionReport,
    ContributionRow,
    ContributionRun,
    ContributionRunPublic,
    ContributionScore,
    ContributionTotals,
    Federation,
    Membership,
    ModelRelease,
    Organisation,
    OwnContribution,
    ReleaseAccess,
    ReleaseRef,
    ReleaseStatus,
    TrainingRun,
)
from portal.services._db import commit

__all__ = [
    "store_contribution",
    "federation_ledger",
    "release_ledger",
    "ledger_csv",
    "set_contribution_policy",
    "contribution_shortfall",
    "require_contribution",
    "CSV_COLUMNS",
    "WITHHELD",
]

WITHHELD = "[withheld: names another site]"
CSV_COLUMNS = (
    "row",
    "federation_id",
    "run_id",
    "run_ref",
    "method",
    "metric",
    "site",
    "records",
    "rounds_trained",
    "data_share",
    "utility",
    "utility_share",
    "leave_one_out",
    "flag",
    "alone",
    "with_network",
    "total_gain",
    "inputs",
    "not_available",
)
_PUBLISHED = (ReleaseStatus.published, ReleaseStatus.withdrawn)


# -- storing ---------------------------------------------------------------------------------------
def store_contribution(
    session: Session, run: TrainingRun, report: ContributionReport, members: dict[str, Membership]
) -> None:
    """Add the run's ledger rows to the session (the run's report flow commits them with the run).

    `members` maps the federation's site names to their memberships. A block naming a site that
    did not take part in the run is refused (`BadRequest`), naming the site.
    """
    extra = sorted(set(report.per_site) - set(run.sites))
    if extra:
        raise BadRequest(f"contribution names site(s) {extra} that did not take part in the run")
    session.add(
        ContributionRun(
            run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
            federation_id=run.federation_id,
            method=report.method,
            metric=report.metric,
            inputs=report.inputs,
            total_gain=report.total_gain,
            not_available=dict(report.not_available),
        )
    )
    for site, scores in sorted(report.per_site.items()):
        session.add(
            ContributionScore(
                run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
                federation_id=run.federation_id,
                membership_id=members[site].id,  # type: ignore[arg-type]  # a stored membership has an id
                site_name=site,
                **scores.model_dump(),
            )
        )


# -- reading ---------------------------------------------------------------------------------------
def _hidden_names(session: Session, federation_id: int, sites: set[str]) -> list[str]:
    """Names of the federation's other sites and their organisations: what a supplier must not read."""
    members = session.exec(select(Membership).where(Membership.federation_id == federation_id)).all()
    own_orgs = {m.organisation_id for m in members if m.site_name in sites}
    orgs = {m.organisation_id for m in members} - own_orgs
    names = {m.site_name for m in members if m.site_name not in sites}
    if orgs:
        names |= set(session.exec(select(Organisation.name).where(col(Organisation.id).in_(orgs))).all())
    return sorted(names)


def _scrub(value: Any, hidden: list[str]) -> Any:
    """`value` with every key or string that names one of `hidden` withheld (case-insensitive)."""
    lowered = [h.casefold() for h in hidden]

    def names(text: str) -> bool:
        folded = text.casefold()
        return any(h in folded for h in lowered)

    if isinstance(value, dict):
        return {k: _scrub(v, hidden) for k, v in value.items() if not names(str(k))}
    if isinstance(value, list):
        return [_scrub(v, hidden) for v in value]
    if isinstance(value, str) and names(value):
        return WITHHELD
    return value


def _sum(values: Iterable[float | None]) -> float | None:
    """The sum, or None if any value is missing (a method that did not run has no total)."""
    values = list(values)
    if any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))


def _row(score: ContributionScore) -> ContributionRow:
    return ContributionRow(
        site=score.site_name,
        records=score.records,
        rounds_trained=score.rounds_trained,
        data_share=score.data_share,
        utility=score.utility,
        utility_share=score.utility_share,
        leave_one_out=score.leave_one_out,
        flag=score.flag,
        alone=score.alone,
        with_network=score.with_network,
    )


def _entry(
    record: ContributionRun,
    run: TrainingRun,
    scores: list[ContributionScore],
    sites: set[str] | None,
    hidden: list[str],
    releases: list[ReleaseRef],
) -> ContributionRunPublic:
    totals = ContributionTotals(
        sites=len(scores),
        records=sum(s.records for s in scores),
        data_share=sum(s.data_share for s in scores),
        utility=_sum(s.utility for s in scores),
        total_gain=record.total_gain,
    )
    visible = scores if sites is None else [s for s in scores if s.site_name in sites]
    own = None
    if sites is not None:
        own = OwnContribution(
            sites=[s.site_name for s in visible],
            records=sum(s.records for s in visible),
            data_share=sum(s.data_share for s in visible),
            utility=_sum(s.utility for s in visible) if visible else (0.0 if totals.utility is not None else None),
            utility_share=(
                _sum(s.utility_share for s in visible)
                if visible
                else (0.0 if all(s.utility_share is not None for s in scores) else None)
            ),
        )
    return ContributionRunPublic(
        run_id=run.id,  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        run_ref=run.run_ref,
        created_at=record.created_at,
        method=record.method,
        metric=record.metric,
        inputs=_scrub(record.inputs, hidden) if sites is not None else record.inputs,
        total_gain=record.total_gain,
        not_available=_scrub(record.not_available, hidden) if sites is not None else record.not_available,
        rows=[_row(s) for s in visible],
        totals=totals,
        own=own,
        releases=releases,
    )


def _policy(federation: Federation) -> ContributionPolicy:
    return ContributionPolicy(
        min_share=federation.min_contribution_share, basis=ContributionBasis(federation.contribution_basis)
    )


def _release_refs(session: Session, run_ids: list[int], sites: set[str] | None) -> dict[int, list[ReleaseRef]]:
    query = select(ModelRelease).where(col(ModelRelease.run_id).in_(run_ids))
    if sites is not None:  # sites see published and withdrawn releases only
        query = query.where(col(ModelRelease.status).in_([s.value for s in _PUBLISHED]))
    refs: dict[int, list[ReleaseRef]] = {}
    for release in session.exec(query.order_by(col(ModelRelease.id))).all():
        refs.setdefault(release.run_id, []).append(
            ReleaseRef(id=release.id, version=release.version, status=release.status)  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        )
    return refs


def _ledger(
    session: Session,
    principal: Principal,
    federation: Federation,
    runs: list[TrainingRun],
    *,
    release_id: int | None = None,
) -> ContributionLedger:
    fid: int = federation.id  # type: ignore[assignment]  # a stored federation has an id
    sites = own_sites(session, principal, fid)
    hidden = _hidden_names(session, fid, sites) if sites is not None else []
    records = {
        r.run_id: r
        for r in session.exec(
            select(ContributionRun).where(col(ContributionRun.run_id).in_([run.id for run in runs]))
        ).all()
    }
    refs = _release_refs(session, list(records), sites)
    scores: dict[int, list[ContributionScore]] = {}
    for score in session.exec(
        select(ContributionScore)
        .where(col(ContributionScore.run_id).in_(list(records)))
        .order_by(col(ContributionScore.site_name))
    ).all():
        scores.setdefault(score.run_id, []).append(score)
    entries = [
        _entry(records[run.id], run, scores.get(run.id, []), sites, hidden, refs.get(run.id, []))
        for run in runs
        if run.id in records
    ]
    return ContributionLedger(
        federation_id=fid,
        release_id=release_id,
        view="all" if sites is None else "own",
        policy=_policy(federation),
        runs=entries,
    )


def federation_ledger(session: Session, principal: Principal, federation_id: int) -> ContributionLedger:
    """Every scored run of the federation, newest first; a supplier or site gets the runs it took part in."""
    federation, _ = federation_view(session, principal, federation_id)
    sites = own_sites(session, principal, federation_id)
    runs = [
        run
        for run in session.exec(
            select(TrainingRun).where(TrainingRun.federation_id == federation_id).order_by(col(TrainingRun.id).desc())
        ).all()
        if sites is None or sites & set(run.sites)
    ]
    return _ledger(session, principal, federation, runs)


def release_ledger(session: Session, principal: Principal, release_id: int) -> ContributionLedger:
    """The ledger of a release's run; not found where the release is (drafts and approved ones, for sites)."""
    release = session.get(ModelRelease, release_id)
    missing = NotFound(f"release {release_id} not found")
    if release is None:
        raise missing
    federation, role = federation_view(session, principal, release.federation_id, missing=missing)
    if role in ("supplier", "client") and release.status not in _PUBLISHED:
        raise missing
    run = session.get(TrainingRun, release.run_id)
    assert run is not None
    ledger = _ledger(session, principal, federation, [run], release_id=release_id)
    if role in ("supplier", "client"):
        reason = contribution_shortfall(session, federation, release, _org_of(principal))
        ledger.access = ReleaseAccess(allowed=reason is None, reason=reason)
    return ledger


def _csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: a string that could start a formula gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def ledger_csv(ledger: ContributionLedger) -> str:
    """The ledger as CSV: one ``site`` row per visible site and one ``total`` row per run (`CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in ledger.runs:
        common = {
            "federation_id": ledger.federation_id,
            "run_id": entry.run_id,
            "run_ref": entry.run_ref,
            "method": entry.method or "",
            "metric": entry.metric,
            "total_gain": entry.total_gain,
            "inputs": json.dumps(entry.inputs, sort_keys=True, ensure_ascii=False),
            "not_available": json.dumps(entry.not_available, sort_keys=True, ensure_ascii=False),
        }
        lines = [{"row": "site", **common, **row.model_dump()} for row in entry.rows]
        lines.append(
            {
                "row": "total",
                **common,
                "site": "",
                "records": entry.totals.records,
                "data_share": entry.totals.data_share,
                "utility": entry.totals.utility,
            }
        )
        for line in lines:
            writer.writerow([_csv_cell("" if line.get(c) is None else line.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


# -- the minimum contribution ------------------------------------------------------------------------
def set_contribution_policy(
    session: Session, principal: Principal, federation_id: int, min_share: float | None, basis: ContributionBasis
) -> Federation:
    """The anchor admin sets (or, with None, switches off) the minimum contribution for release access."""
    federation, role = federation_view(session, principal, federation_id)
    require(role, ("anchor",), "set the minimum contribution")
    before = {"min_share": federation.min_contribution_share, "basis": federation.contribution_basis}
    federation.min_contribution_share = min_share
    federation.contribution_basis = basis.value
    session.add(federation)
    audit.record(
        session,
        actor=principal.label,
        action="federation.contribution_policy",
        target=f"federation {federation.id}",
        federation_id=federation.id,
        detail={"min_share": min_share, "basis": basis.value, "before": before},
    )
    commit(session, "contribution policy")
    return federation


def _org_of(principal: Principal) -> int:
    return principal.site.organisation_id if principal.kind == "client" else principal.org_id


def contribution_shortfall(session: Session, federation: Federation, release: ModelRelease, org_id: int) -> str | None:
    """Why organisation `org_id` may not pull `release` under the minimum contribution, or None if it may."""
    minimum = federation.min_contribution_share
    if minimum is None:
        return None
    record = session.exec(select(ContributionRun).where(ContributionRun.run_id == release.run_id)).first()
    if record is None:
        return None  # a run without scores: nothing to fall below
    basis = ContributionBasis(federation.contribution_basis)
    scores = session.exec(select(ContributionScore).where(ContributionScore.run_id == release.run_id)).all()
    if any(getattr(s, basis.value) is None for s in scores):
        return None  # the share was not measured (secure aggregation hides single updates)
    members = {
        m.id
        for m in session.exec(
            select(Membership).where(Membership.federation_id == federation.id, Membership.organisation_id == org_id)
        ).all()
    }
    share = sum(float(getattr(s, basis.value)) for s in scores if s.membership_id in members)
    if share >= minimum:
        return None
    run = session.get(TrainingRun, release.run_id)
    org = session.get(Organisation, org_id)
    assert run is not None and org is not None
    label = "utility share" if basis == ContributionBasis.utility_share else "data share"
    return (
        f"release {release.version} needs a contribution ({label}) of at least {minimum:g} in run '{run.run_ref}'; "
        f"the sites of '{org.name}' contributed {share:.4g} (the minimum contribution the anchor set for "
        f"federation {federation.id})"
    )


def require_contribution(session: Session, federation: Federation, release: ModelRelease, org_id: int) -> None:
    """Refuse (`Forbidden`, naming the rule) a pull by an organisation below the federation's minimum contribution."""
    reason = contribution_shortfall(session, federation, release, org_id)
    if reason is not None:
        raise Forbidden(reason)
