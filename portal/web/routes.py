"""Web pages (placeholder until the UI lands)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response


def install_web(app: FastAPI) -> None:
    pass


def render_error(request: Request, status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return HTMLResponse(f"<h1>{status}</h1><p>{reason}</p>", status_code=status, headers=headers)
