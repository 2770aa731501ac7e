"""The contribution ledger per federation and per release (JSON and CSV), and the minimum contribution.

Every role of the federation reads the ledger, each seeing the rows it may
(`portal.services.contributions`); the CSV holds exactly the rows of the JSON. Only the anchor
sets the minimum contribution for release access.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from portal.api.deps import CurrentPrincipal, CurrentUser, SessionDep
from portal.api.params import FederationId, ReleaseId
from portal.models import ContributionLedger, ContributionPolicyUpdate, FederationPublic
from portal.services import contributions

router = APIRouter(prefix="/federations/{federation_id}", tags=["contributions"])
release_router = APIRouter(prefix="/releases", tags=["contributions"])

_CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "the ledger rows the caller may see, as CSV"}
}


def csv_response(text: str, filename: str) -> Response:
    """A CSV download named `filename`."""
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/contributions", response_model=ContributionLedger)
def federation_ledger(session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId) -> object:
    """Every scored run: all sites for the anchor, auditors and coordinator; a supplier's own rows and totals."""
    return contributions.federation_ledger(session, principal, federation_id)


@router.get("/contributions.csv", response_class=Response, responses=_CSV)
def federation_ledger_csv(session: SessionDep, principal: CurrentPrincipal, federation_id: FederationId) -> Response:
    """The federation's ledger as CSV, with exactly the rows the caller may see."""
    ledger = contributions.federation_ledger(session, principal, federation_id)
    return csv_response(contributions.ledger_csv(ledger), f"contributions-federation-{federation_id}.csv")


@router.put("/contribution-policy", response_model=FederationPublic)
def set_contribution_policy(
    session: SessionDep, principal: CurrentUser, federation_id: FederationId, data: ContributionPolicyUpdate
) -> object:
    """The anchor sets the minimum contribution for release access (null: off, the default); audited."""
    return contributions.set_contribution_policy(session, principal, federation_id, data.min_share, data.basis)


@release_router.get("/{release_id}/contributions", response_model=ContributionLedger)
def release_ledger(session: SessionDep, principal: CurrentPrincipal, release_id: ReleaseId) -> object:
    """The ledger of the release's run; a supplier or site also learns whether it may pull the release."""
    return contributions.release_ledger(session, principal, release_id)


@release_router.get("/{release_id}/contributions.csv", response_class=Response, responses=_CSV)
def release_ledger_csv(session: SessionDep, principal: CurrentPrincipal, release_id: ReleaseId) -> Response:
    """The release's ledger as CSV, with exactly the rows the caller may see."""
    ledger = contributions.release_ledger(session, principal, release_id)
    return csv_response(contributions.ledger_csv(ledger), f"contributions-release-{release_id}.csv")
