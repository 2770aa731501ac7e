"""Security headers on every response: a strict Content-Security-Policy, no framing, no sniffing.

A pure ASGI middleware placed outermost, so that responses built below the routes (the body
size limit's 413, static files, error pages) carry them too. The pages use no scripts and no
inline styles; only the API's Swagger page (``/api/v1/docs``) loads its script and styles from
the CDN FastAPI points it at, and gets a policy that allows exactly that.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeaders", "CONTENT_SECURITY_POLICY"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Add CSP, ``X-Frame-Options``, ``X-Content-Type-Options`` and ``Referrer-Policy`` to every response.

    With `hsts`, also ``Strict-Transport-Security`` (set it when the portal is served over TLS).
    """

    def __init__(self, app: ASGIApp, *, docs_path: str, hsts: bool = False):
        self.app = app
        self.docs_path = docs_path
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = _DOCS_POLICY if scope.get("path") == self.docs_path else CONTENT_SECURITY_POLICY

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("X-Content-Type-Options", "nosniff")
                # "same-origin", not "no-referrer": under no-referrer, browsers send `Origin: null` with forms,
                # which the cross-site check must refuse.
                headers.setdefault("Referrer-Policy", "same-origin")
                if self.hsts:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, with_headers)
