"""One HTTP client for the portal's REST API, shared by every role that talks to the portal.

    with PortalAPI("https://portal.example.com", token) as portal:
        keys = portal.get("/api/v1/federations/1/site-keys", what="listing the admitted site keys").json()

httpx does the HTTP. This adds the four things every caller needs the same way: the base
URL, the bearer token, a timeout, and one error: a request that does not end in a 2xx
answer (the portal unreachable, a timeout, a 4xx or 5xx) raises `PortalRequestError`
naming the URL, the status and the portal's ``detail``. Paths are the portal's own (its
``/api/v1`` prefix is `portal.protocol.API_PREFIX`); nothing here imports the portal.

Tests pass their own ``httpx.Client`` as `http` (FastAPI's ``TestClient`` is one), so the
real client code runs against the application in-process.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from sangsaeng.errors import PortalRequestError

__all__ = ["PortalAPI", "PortalRequestError", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 60.0  # seconds; an artifact upload or download is a few MiB at most
_DETAIL_CHARS = 500  # of a non-JSON answer (a proxy's HTML error page, say)


def _detail(response: httpx.Response) -> str:
    """The portal's ``detail`` (FastAPI's error body), else the start of the answer's text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_DETAIL_CHARS]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return response.text[:_DETAIL_CHARS]


class PortalAPI:
    """The portal at `base_url`, asked with `token` as bearer token (none for public routes).

    `http` is an ``httpx.Client`` to send through instead of a new one (its own base URL and
    headers stay in force; this one is then not closed by `close`).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(base_url=self.base_url, timeout=timeout)

    def request(self, method: str, path: str, *, what: str = "", **kwargs: Any) -> httpx.Response:
        """Send one request; a 2xx answer is returned, anything else raises `PortalRequestError`.

        `what` says what the request was for ("downloading 1.2.0"); it starts the error message.
        Other keyword arguments go to ``httpx.Client.request`` (`json`, `data`, `params`, ...).
        """
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.base_url}{path}"
        prefix = f"{what}: " if what else ""
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise PortalRequestError(
                f"{prefix}cannot reach the portal at {url}: {exc}", method=method, url=url, detail=str(exc)
            ) from exc
        if not response.is_success:
            detail = _detail(response)
            raise PortalRequestError(
                f"{prefix}portal answered {response.status_code} to {method} {url}: {detail}",
                method=method,
                url=url,
                status=response.status_code,
                detail=detail,
            )
        return response

    def get(self, path: str, *, what: str = "", **kwargs: Any) -> httpx.Response:
        """`request` with GET."""
        return self.request("GET", path, what=what, **kwargs)

    def post(self, path: str, *, what: str = "", **kwargs: Any) -> httpx.Response:
        """`request` with POST."""
        return self.request("POST", path, what=what, **kwargs)

    def close(self) -> None:
        """Close the connection pool (only if this object opened it)."""
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> PortalAPI:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
