"""The FastAPI application: REST API under /api/v1 (OpenAPI at /api/v1/openapi.json) and web pages.

``uvicorn portal.main:app`` serves the portal configured from the environment;
`create_app` builds one for given settings (tests, ``sangsaeng portal serve``).
"""

from __future__ import annotations

import logging
import math
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError

from portal.api.main import api_router, openapi_in_declared_order
from portal.core.config import Settings
from portal.core.db import make_engine
from portal.core.errors import ArtifactError, PortalError
from portal.core.headers import SecurityHeaders
from portal.core.limits import BodySizeLimit
from portal.core.ratelimit import LoginLimiter
from portal.core.security import ReleaseSigner
from sangsaeng.errors import ModelArtifactError

__all__ = ["create_app", "API_PREFIX"]

API_PREFIX = "/api/v1"
logger = logging.getLogger("sangsaeng.portal")


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """A portal application; the database must already be migrated (``sangsaeng portal migrate``)."""
    settings = settings or Settings()
    app = FastAPI(
        title="Sangsaeng portal",
        version="1.0.0",
        description="Membership of the supply-chain federation, roles, model releases and auditor access.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine or make_engine(settings.sqlalchemy_url, pool_size=settings.db_pool_size)
    # The same pool, for `portal.api.deps.read_json`: reads without a transaction around them. SQLite starts
    # none for a SELECT anyway, and switching its connection's mode would cost a PRAGMA on every checkin.
    sqlite = app.state.engine.dialect.name == "sqlite"
    app.state.read_engine = (
        app.state.engine if sqlite else app.state.engine.execution_options(isolation_level="AUTOCOMMIT")
    )
    app.state.read_limiters = WeakKeyDictionary()  # `portal.api.deps.read_json`: one limiter per event loop
    app.state.signer = ReleaseSigner.load_or_create(settings.resolved_signing_key_path)
    app.state.login_limiter = LoginLimiter(
        app.state.engine,
        max_failures=settings.login_max_failures,
        ip_max_failures=settings.login_ip_max_failures,
        window_seconds=settings.login_window_seconds,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes * 4 // 3 + 64 * 1024)
    # Added last, so outermost: the limit's 413 gets the headers too.
    app.add_middleware(SecurityHeaders, docs_path=f"{API_PREFIX}/docs", hsts=bool(settings.cookie_secure))
    app.include_router(api_router, prefix=API_PREFIX)
    generate = app.openapi

    def openapi() -> dict[str, Any]:  # the hot read routes are matched first; the document lists them as declared
        if app.openapi_schema is None:
            app.openapi_schema = openapi_in_declared_order(generate(), API_PREFIX)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI documents replacing app.openapi this way
    _install_error_handlers(app)

    from portal.web.routes import install_web

    install_web(app)
    return app


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PortalError)
    async def portal_error(request: Request, exc: PortalError) -> Response:
        if not _is_api(request):
            from portal.web.routes import render_error

            return render_error(request, exc.status, exc.reason, headers=exc.headers)
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ModelArtifactError)
    async def artifact_error(request: Request, exc: ModelArtifactError) -> Response:
        # The artifact reader is shared with the supplier's PC, so it raises the neutral error;
        # here, at the portal's boundary, it becomes the portal's own 422.
        return await portal_error(request, ArtifactError(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input, and JSON cannot carry the NaN or infinity a
        # request may hold (json.loads accepts them; the response encoder refuses): a 500.
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, exc: IntegrityError) -> Response:
        logger.warning("integrity error on %s: %s", request.url.path, exc.orig)
        return JSONResponse({"detail": "conflicts with existing data"}, status_code=409)

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> Response:
        logger.warning("data error on %s: %s", request.url.path, exc.orig)
        return JSONResponse(
            {"detail": "a value cannot be stored (out of range or invalid characters)"}, status_code=422
        )


def _json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by its name ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def __getattr__(name: str) -> FastAPI:
    """``portal.main:app`` for uvicorn, built from the environment on first access."""
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
