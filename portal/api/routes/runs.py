"""Training runs reported by the coordinator, and the privacy spend they record."""

from __future__ import annotations

from fastapi import APIRouter

from portal.api.deps import CurrentPrincipal, SessionDep, SettingsDep
from portal.api.params import FederationId, RunId
from portal.models import (
    PrivacyEntry,
    PrivacyReportPublic,
    PrivacyReportSummary,
    PrivacyReportUpload,
    RunPublic,
    RunReport,
)
from portal.services import privacy, runs

router = APIRouter(prefix="/federations/{federation_id}", tags=["runs"])
run_router = APIRouter(prefix="/runs", tags=["runs"])


@router.post("/runs", response_model=RunPublic, status_code=201)
def report_run(
    session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId, data: RunReport
) -> object:
    """The coordinator reports a run (coordinator token of this federation)."""
    return runs.report_run(session, principal, federation_id, data)


@router.get("/runs", response_model=list[RunPublic])
def list_runs(session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId) -> list:
    """All runs for the anchor; for a supplier the runs it took part in, showing only its own sites."""
    return runs.runs_of(session, principal, federation_id)


@router.get("/privacy", response_model=list[PrivacyEntry])
def list_privacy(session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId) -> list:
    """Privacy spend per site and run: every site for the anchor and auditors, its own for a supplier."""
    return privacy.privacy_entries(session, principal, federation_id)


@run_router.get("/{run_id}", response_model=RunPublic)
def read_run(session: SessionDep, principal: CurrentPrincipal, run_id: RunId) -> object:
    return runs.run_public(session, principal, run_id)


@run_router.post("/{run_id}/privacy-report", response_model=PrivacyReportSummary, status_code=201)
def upload_privacy_report(
    session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal, run_id: RunId, data: PrivacyReportUpload
) -> object:
    """The coordinator stores the run's signed privacy report (report.json, its Ed25519 signature, the key).

    Refused unless the signature verifies over the exact report bytes and the report's run_id is this run's.
    """
    return privacy.upload_privacy_report(session, settings, principal, run_id, data)


@run_router.get("/{run_id}/privacy-report", response_model=PrivacyReportPublic)
def read_privacy_report(session: SessionDep, principal: CurrentPrincipal, run_id: RunId) -> object:
    """The run's signed privacy report, byte-exact, for the anchor and the federation's auditors."""
    return privacy.privacy_report_of(session, principal, run_id)
