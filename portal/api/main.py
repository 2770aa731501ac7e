"""The /api/v1 router: every resource router, each with its own prefix and tags."""

from __future__ import annotations

from fastapi import APIRouter

from portal.api.routes import (
    audit,
    contributions,
    enrolment,
    federations,
    login,
    memberships,
    organisations,
    releases,
    runs,
    tokens,
    users,
)

api_router = APIRouter()
for router in (
    login.router,
    users.router,
    organisations.router,
    federations.router,
    memberships.router,
    enrolment.router,
    tokens.router,
    tokens.token_router,
    runs.router,
    runs.run_router,
    releases.router,
    releases.release_router,
    audit.router,
    audit.keys_router,
    contributions.router,
    contributions.release_router,
):
    api_router.include_router(router)
