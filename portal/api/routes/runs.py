"""Training runs reported by the coordinator, the privacy spend they record, and what privacy is trusted from.

The anchor pins the coordinator's report-signing key (``/coordinator-key``) and sets the
federation's DP policy (``/privacy-policy``); signed privacy reports verify against the pinned key only.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portal.api.deps import Bearer, CurrentPrincipal, CurrentUser, SessionDep, SettingsDep, read_json
from portal.api.params import FederationId, RunId
from portal.models import (
    CoordinatorKeyPublic,
    CoordinatorKeyRegister,
    FederationPublic,
    PrivacyEntry,
    PrivacyPolicyUpdate,
    PrivacyReportPublic,
    PrivacyReportSummary,
    PrivacyReportUpload,
    RunInterrupt,
    RunPublic,
    RunReport,
    TrainingRun,
)
from portal.services import privacy, privacy_policy, runs

router = APIRouter(prefix="/federations/{federation_id}", tags=["runs"])
run_router = APIRouter(prefix="/runs", tags=["runs"])


@router.post("/runs", response_model=RunPublic, status_code=201)
def report_run(
    session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId, data: RunReport
) -> object:
    """The coordinator reports a run (coordinator token of this federation).

    A run reported as "running" is reported again under its run_ref as it progresses (same row);
    once completed or failed it is immutable (409).
    """
    return runs.report_run(session, principal, federation_id, data)


@router.get("/runs", response_model=list[RunPublic])
async def list_runs(request: Request, credentials: Bearer, federation_id: FederationId) -> Response:
    """All runs for the anchor; for a supplier the runs it took part in, showing only its own sites.

    A running run without a report for ``run_stall_minutes`` reads ``"stalled": true``.
    """
    stall = request.app.state.settings.run_stall_minutes
    return await read_json(
        request,
        credentials,
        list[RunPublic],
        lambda session, principal: runs.runs_of(session, principal, federation_id, stall_minutes=stall),
        preload=(None, federation_id),
    )


@router.get("/privacy", response_model=list[PrivacyEntry])
async def list_privacy(request: Request, credentials: Bearer, federation_id: FederationId) -> Response:
    """Privacy spend per site and run: every site for the anchor and auditors, its own for a supplier."""
    return await read_json(
        request,
        credentials,
        list[PrivacyEntry],
        lambda session, principal: privacy.privacy_entries(session, principal, federation_id),
        preload=(None, federation_id),
    )


@router.get("/coordinator-key", response_model=CoordinatorKeyPublic)
def read_coordinator_key(session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId) -> object:
    """The federation's pinned coordinator signing key and its fingerprint (404 before one is pinned)."""
    return privacy_policy.coordinator_key_of(session, principal, federation_id)


@router.put("/coordinator-key", response_model=CoordinatorKeyPublic)
def pin_coordinator_key(
    session: SessionDep, principal: CurrentUser, federation_id: FederationId, data: CoordinatorKeyRegister
) -> object:
    """The anchor pins its coordinator's Ed25519 report-signing key, or rotates the pinned one (audited)."""
    return privacy_policy.register_coordinator_key(session, principal, federation_id, data.public_key_pem)


@router.put("/privacy-policy", response_model=FederationPublic)
def set_privacy_policy(
    session: SessionDep, principal: CurrentUser, federation_id: FederationId, data: PrivacyPolicyUpdate
) -> object:
    """The anchor sets the DP policy: with ``dp_max_epsilon`` set, a release needs a verified signed report."""
    return privacy_policy.set_privacy_policy(session, principal, federation_id, data.dp_max_epsilon)


@run_router.get("/{run_id}", response_model=RunPublic)
async def read_run(request: Request, credentials: Bearer, run_id: RunId) -> Response:
    """One run, for the anchor, coordinator or a site that took part (showing only its sites); auditors refused."""
    stall = request.app.state.settings.run_stall_minutes
    return await read_json(
        request,
        credentials,
        RunPublic,
        lambda session, principal: runs.run_public(session, principal, run_id, stall_minutes=stall),
        preload=(TrainingRun, run_id),
    )


@run_router.post("/{run_id}/interrupt", response_model=RunPublic)
def interrupt_run(session: SessionDep, principal: CurrentUser, run_id: RunId, data: RunInterrupt) -> object:
    """The anchor marks a running run interrupted (its coordinator died without reporting an end; audited).

    It stops nothing: the coordinator's next report of the run (``coordinator run --resume``) reopens it.
    """
    return runs.interrupt_run(session, principal, run_id, data.reason)


@run_router.post("/{run_id}/privacy-report", response_model=PrivacyReportSummary, status_code=201)
def upload_privacy_report(
    session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal, run_id: RunId, data: PrivacyReportUpload
) -> object:
    """The coordinator stores the run's signed privacy report (report.json and its Ed25519 signature).

    Refused unless the signature verifies over the exact report bytes under the federation's pinned
    coordinator key, the report's run_id is this run's, every epsilon recomputes, and the per-site
    epsilons and budgets are those the run recorded.
    """
    return privacy.upload_privacy_report(session, settings, principal, run_id, data)


@run_router.get("/{run_id}/privacy-report", response_model=PrivacyReportPublic)
def read_privacy_report(session: SessionDep, principal: CurrentPrincipal, run_id: RunId) -> object:
    """The run's signed privacy report, byte-exact, for the anchor and the federation's auditors."""
    return privacy.privacy_report_of(session, principal, run_id)
