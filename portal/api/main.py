"""The /api/v1 router: every resource router's routes (each router has its own prefix and tags), in one list.

The routes are copied in, not included: FastAPI 0.13x keeps an included router as a nested
branch and matches a request against each branch's routes in turn, re-matching at every
level, which cost about a sixth of a read request's CPU with sixteen routers. A route keeps
its full path, tags, responses and operation id (its router's prefix and tags were applied when
it was declared), so the OpenAPI document is the same (in the order declared, `openapi_in_declared_order`).

The hot read routes (those answered through `portal.api.deps.read_json`) come first: routes are
matched in order, each a regular expression and some bookkeeping (about 15 microseconds), and
they sat behind up to 33 others. Moving a route ahead of another changes which one answers a
request only where both could match it in full; `_first` checks that no route it moves ahead
of could (same method and paths that overlap), and raises at import otherwise.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute

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


# The read routes of `bench/portal.py` and their siblings, in this order, ahead of the rest.
HOT = (
    "list_federations",
    "list_memberships",
    "list_site_keys",
    "list_releases",
    "list_privacy",
    "read_run",
    "read_federation",
    "list_runs",
    "read_release",
)


def _segments_overlap(a: str, b: str) -> bool:
    """Whether two path templates can match one path: as many segments, each pair equal or one a parameter."""
    sa, sb = a.strip("/").split("/"), b.strip("/").split("/")
    if len(sa) != len(sb):
        return False
    for x, y in zip(sa, sb, strict=True):
        for seg in (x, y):
            param = seg.startswith("{") and seg.endswith("}") and seg.count("{") == 1
            if not param and "{" in seg or param and ":" in seg:
                raise ValueError(f"cannot check the path segment {seg!r} for overlap (a converter or a partial one)")
        if x != y and not x.startswith("{") and not y.startswith("{"):
            return False
    return True


def _clash(a: APIRoute, b: APIRoute) -> bool:
    """Whether one request could match both routes in full."""
    return bool((a.methods or set()) & (b.methods or set())) and _segments_overlap(a.path, b.path)


def _first(routes: list[APIRoute], names: tuple[str, ...]) -> list[APIRoute]:
    """`routes` with those whose endpoint is named in `names` moved to the front; raises if that could change
    which route answers a request."""
    by_name = {r.endpoint.__name__: r for r in routes}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ValueError(f"unknown hot routes: {unknown}")
    hot = [by_name[n] for n in names]
    for route in hot:
        for earlier in routes[: routes.index(route)]:
            if earlier not in hot and _clash(route, earlier):
                raise ValueError(f"moving {route.path} ahead of {earlier.path} would change which route answers")
    for i, route in enumerate(hot):  # among themselves too, in their new order
        for other in hot[i + 1 :]:
            if _clash(route, other) and routes.index(route) > routes.index(other):
                raise ValueError(f"moving {route.path} ahead of {other.path} would change which route answers")
    return hot + [r for r in routes if r not in hot]


_routes = [r for r in api_router.routes if isinstance(r, APIRoute)]
if len(_routes) != len(api_router.routes):
    raise TypeError("the API router holds a route that is not an APIRoute: its order cannot be checked")

DECLARED = tuple((r.path, method.lower()) for r in _routes for method in sorted(r.methods or ()))
"""The API's (path, method) pairs as declared: the OpenAPI document's order (`openapi_in_declared_order`)."""
api_router.routes[:] = _first(_routes, HOT)


def openapi_in_declared_order(schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`schema` (FastAPI's, which lists paths in matching order) with its paths and their operations as declared."""
    rank = {(prefix + path, method): i for i, (path, method) in enumerate(DECLARED)}
    paths: dict[str, dict[str, Any]] = schema["paths"]
    late = len(rank)

    def first(item: tuple[int, str]) -> tuple[int, int]:
        return min((rank.get((item[1], m), late) for m in paths[item[1]]), default=late), item[0]

    ordered = [p for _, p in sorted(enumerate(paths), key=first)]
    schema["paths"] = {p: dict(sorted(paths[p].items(), key=lambda op: rank.get((p, op[0]), late))) for p in ordered}
    return schema
