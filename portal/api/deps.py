"""Dependencies shared by the routes: settings, database session, the authenticated caller.

The API's hot read routes use `read_json` instead: it authenticates, runs the route's query and
serialises the answer in one worker-thread hop, under a per-process limit of as many concurrent
reads as the database pool holds. A route built from the dependencies below costs a hop per
synchronous dependency and one for its response validation; each is a thread handoff of about
0.1 ms of CPU, which at a thousand requests a second on two cores is a large share of the budget.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any
from weakref import WeakKeyDictionary

import anyio
import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter
from sqlalchemy.pool import QueuePool
from sqlmodel import Session

from portal.access import Principal, authenticate
from portal.core.config import Settings
from portal.core.errors import Forbidden
from portal.core.security import ReleaseSigner
from portal.models import TokenKind

__all__ = [
    "SessionDep",
    "SettingsDep",
    "SignerDep",
    "CurrentPrincipal",
    "CurrentUser",
    "Bearer",
    "read_json",
    "SESSION_COOKIE",
]

SESSION_COOKIE = "sangsaeng_session"
_bearer = HTTPBearer(auto_error=False, description="A session, coordinator or client token")


def get_settings(request: Request) -> Settings:
    """The portal's settings, from the application's state."""
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A database session for one request, closed after it; loaded objects stay readable after commit.

    Creating a session does no I/O (it connects on first use), so it is made on the event loop;
    closing it ends its transaction, a round trip, so that runs in a worker thread.
    """
    session = Session(request.app.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        with anyio.CancelScope(shield=True):  # a client that went away must not leak the connection
            await anyio.to_thread.run_sync(session.close)


def get_signer(request: Request) -> ReleaseSigner:
    """The portal's release signer, from the application's state."""
    return request.app.state.signer


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SignerDep = Annotated[ReleaseSigner, Depends(get_signer)]


def get_principal(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from ``Authorization: Bearer`` only.

    The web session cookie is not accepted here: a browser attaches it to any request, even a
    form posted by another site or a sibling subdomain, so a cookie-authenticated API would be
    open to cross-site request forgery. No page calls the API; scripts and machines send tokens.
    """
    return authenticate(session, credentials.credentials if credentials is not None else None)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def get_current_user(principal: CurrentPrincipal) -> Principal:
    """A signed-in person (not a machine token)."""
    if principal.token.kind != TokenKind.session:
        raise Forbidden("this route is for signed-in users, not machine tokens")
    return principal


CurrentUser = Annotated[Principal, Depends(get_current_user)]

Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
"""The ``Authorization: Bearer`` credentials as sent (None without them), for `read_json`."""


@functools.cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def _read_limiter(app: FastAPI) -> CapacityLimiter:
    """This event loop's limit on concurrent reads: the database pool's size (one per loop; tests run several)."""
    limiters: WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = app.state.read_limiters
    loop = asyncio.get_running_loop()
    limiter = limiters.get(loop)
    if limiter is None:
        pool = app.state.engine.pool
        size = pool.size() if isinstance(pool, QueuePool) else app.state.settings.db_pool_size
        limiter = limiters[loop] = CapacityLimiter(size)
    return limiter


async def read_json(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    model: Any,
    work: Callable[[Session, Principal], object],
    *,
    preload: tuple[type[Any] | None, int] | None = None,
) -> Response:
    """Authenticate, run `work(session, principal)` and answer its result as JSON of `model`, in one go.

    The result is validated against `model` (ORM rows by attribute) and serialised as FastAPI
    does for a route's ``response_model``, which the route still declares for its schema. On
    PostgreSQL at most the database pool's size of these run at once in a process; more wait on
    the event loop.
    `preload` names the federation (``(None, id)``) or the object of a federation (``(Model, id)``)
    the route reads: authentication loads it in its own query (`portal.access.authenticate`), which
    saves the route a round trip to find it.
    Errors (`PortalError` and the rest) propagate to the application's handlers as from any route.

    The session reads in autocommit mode (``app.state.read_engine``): on PostgreSQL a transaction
    would cost a BEGIN and a ROLLBACK round trip around the one or two queries, and at its default
    isolation (read committed) each statement reads its own snapshot anyway. SQLite starts no
    transaction for a SELECT in either mode. `work` must not write; the one write on this path, a
    site's activation on first contact, commits in its own transaction (`portal.access.authenticate`).

    On SQLite the work runs on the event loop itself: its reads are of a local file in WAL mode,
    which never waits on a writer, and take tens of microseconds, so the hop to a worker thread
    and back cost more than the work (measured in process, `bench/portal.py`'s routes: 25-35 %
    of the CPU of a request). A site's first contact, the one write, may wait for SQLite's write
    lock (held for milliseconds by another request's commit) once in the site's life. On
    PostgreSQL each query waits on the network: a worker thread.
    """
    adapter = _adapter(model)
    engine = request.app.state.engine
    reader = request.app.state.read_engine
    raw_token = credentials.credentials if credentials is not None else None

    def run() -> bytes:
        with Session(reader, expire_on_commit=False) as session:
            principal = authenticate(session, raw_token, writer=engine, preload=preload)
            result = work(session, principal)
            return adapter.dump_json(adapter.validate_python(result, from_attributes=True), by_alias=True)

    if reader.dialect.name == "sqlite":  # a local file read in microseconds: a thread hop would cost more
        body = run()
    else:
        body = await anyio.to_thread.run_sync(run, limiter=_read_limiter(request.app))
    return Response(body, media_type="application/json")
