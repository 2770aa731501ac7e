"""One membership (site) and its lifecycle: approve, reject, suspend, reinstate, revoke."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import Field
from sqlmodel import SQLModel

from portal import crud
from portal.api.deps import CurrentPrincipal, CurrentUser, SessionDep
from portal.api.params import MembershipId
from portal.models import MembershipPublic
from portal.services.memberships import get_membership, transition_membership

router = APIRouter(prefix="/memberships", tags=["memberships"])

Action = Literal["approve", "reject", "suspend", "reinstate", "revoke"]


class TransitionRequest(SQLModel):
    """An optional reason for a lifecycle move (up to 500 characters), kept in the audit trail."""

    reason: str = Field(default="", max_length=500)


@router.get("/{membership_id}", response_model=MembershipPublic)
def read_membership(session: SessionDep, principal: CurrentPrincipal, membership_id: MembershipId) -> MembershipPublic:
    """One membership: any for the anchor and coordinator, its own for a supplier or site; auditors refused."""
    membership, _ = get_membership(session, principal, membership_id)
    return crud.membership_public(session, membership)


@router.post("/{membership_id}/{action}", response_model=MembershipPublic)
def change_membership(
    session: SessionDep,
    principal: CurrentUser,
    membership_id: MembershipId,
    action: Action,
    data: TransitionRequest | None = None,
) -> MembershipPublic:
    """Move a site through its lifecycle (anchor admin only). Revoking removes its key at once."""
    membership = transition_membership(session, principal, membership_id, action, data.reason if data else "")
    return crud.membership_public(session, membership)
