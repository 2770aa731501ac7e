"""The /api/v1 router: every resource router's routes (each router has its own prefix and tags), in one list.

The routes are copied in, not included: FastAPI 0.13x keeps an included router as a nested
branch and matches a request against each branch's routes in turn, re-matching at every
level, which cost about a sixth of a read request's CPU with sixteen routers. A route keeps
its full path, tags, responses and operation id (its router's prefix and tags were applied when
it was declared), so the OpenAPI document is the same.
"""

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
    assert not router.dependencies and not router.on_startup, "copying routes would drop router-level settings"
    api_router.routes.extend(router.routes)
