"""The portal's exception tree.

Every `PortalError` carries an HTTP status and a reason meant for the caller; the API turns
it into ``{"detail": reason}`` with that status, the web pages into an error page. Anything
else escaping a route is a bug (a 500)::

    PortalError (400)
    ├── BadRequest (400)         malformed input the schema could not catch
    │   ├── InvalidKey           a public key that is malformed or of the wrong type
    │   └── ArtifactError        a model artifact that cannot be read or does not fit
    ├── Unauthorized (401)       no, unknown, expired or revoked credentials
    ├── Forbidden (403)          authenticated, but the role does not allow it
    ├── NotFound (404)           absent, or not visible to the caller
    ├── Conflict (409)           the state does not allow it (approve twice, reused invite)
    │   └── PolicyViolation      release gate: privacy budget or metric threshold not met
    ├── Gone (410)               expired invite
    ├── PayloadTooLarge (413)
    ├── UnprocessableContent (422)
    └── TooManyRequests (429)    login rate limit
"""

from __future__ import annotations

__all__ = [
    "PortalError",
    "BadRequest",
    "InvalidKey",
    "ArtifactError",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PolicyViolation",
    "Gone",
    "PayloadTooLarge",
    "UnprocessableContent",
    "TooManyRequests",
]


class PortalError(Exception):
    """A refused request: `status` is its HTTP status, `reason` says why."""

    status: int = 400

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.headers = headers


class BadRequest(PortalError):
    status = 400


class UnprocessableContent(PortalError):
    status = 422


class InvalidKey(UnprocessableContent):
    """A site public key that cannot be parsed or is not of the accepted type."""


class ArtifactError(UnprocessableContent):
    """A model artifact that cannot be read, or whose content does not fit its task."""


class Unauthorized(PortalError):
    status = 401

    def __init__(self, reason: str = "not authenticated"):
        super().__init__(reason, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(PortalError):
    status = 403


class NotFound(PortalError):
    status = 404


class Conflict(PortalError):
    status = 409


class PolicyViolation(Conflict):
    """A release that may not be published: privacy budget exceeded or metric below threshold."""


class Gone(PortalError):
    status = 410


class PayloadTooLarge(PortalError):
    status = 413


class TooManyRequests(PortalError):
    status = 429
