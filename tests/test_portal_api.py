"""sangsaeng.portal_api: one client for the portal; every failure is one PortalRequestError naming URL, status, detail.

The transport is httpx's own MockTransport (the seam httpx gives for this); the end-to-end
use against the real portal is in tests/portal/test_site_client.py and test_cli.py.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from sangsaeng.errors import PortalRequestError, SangsaengError
from sangsaeng.portal_api import PortalAPI

BASE = "http://portal.example"


def _api(handler, token: str | None = "tok-1") -> PortalAPI:
    http = httpx.Client(base_url=BASE, transport=httpx.MockTransport(handler))
    return PortalAPI(BASE, token, http=http)


def test_bearer_token_and_base_url_are_sent():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    assert _api(handler).get("/api/v1/things", params={"a": 1}).json() == {"ok": True}
    assert str(seen[0].url) == f"{BASE}/api/v1/things?a=1"
    assert seen[0].headers["Authorization"] == "Bearer tok-1"
    _api(handler, token=None).post("/api/v1/login/access-token", data={"username": "u"})
    assert "Authorization" not in seen[1].headers


def test_a_refusal_names_what_url_status_and_the_portals_detail():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"detail": "membership is not approved"})

    with pytest.raises(PortalRequestError) as caught:
        _api(handler).get("/api/v1/federations/3/releases", what="listing releases")
    error = caught.value
    assert isinstance(error, SangsaengError)
    assert (error.status, error.detail, error.method) == (403, "membership is not approved", "GET")
    assert error.url == f"{BASE}/api/v1/federations/3/releases"
    assert str(error) == (
        f"listing releases: portal answered 403 to GET {BASE}/api/v1/federations/3/releases: membership is not approved"
    )


def test_a_non_json_error_page_is_quoted_briefly():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>" + "x" * 2000)

    with pytest.raises(PortalRequestError, match="portal answered 502") as caught:
        _api(handler).post("/api/v1/runs", json={})
    assert caught.value.detail.startswith("<html>bad gateway</html>") and len(caught.value.detail) == 500


def test_an_unreachable_portal_is_the_same_error_without_a_status():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with PortalAPI(f"http://127.0.0.1:{port}/", timeout=5) as api, pytest.raises(PortalRequestError) as caught:
        api.get("/api/v1/keys/release-signing", what="fetching the key")
    assert caught.value.status is None
    assert str(caught.value).startswith(f"fetching the key: cannot reach the portal at http://127.0.0.1:{port}/api/v1/")


def test_an_injected_client_is_left_open():
    http = httpx.Client(base_url=BASE, transport=httpx.MockTransport(lambda r: httpx.Response(204)))
    with PortalAPI(BASE, http=http) as api:
        api.get("/x")
    assert not http.is_closed
