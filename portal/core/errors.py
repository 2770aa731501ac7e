"""The portal's exception tree, below the root of every Sangsaeng error.

Every `PortalError` carries an HTTP status and a reason meant for the caller; the API turns
it into ``{"detail": reason}`` with that status, the web pages into an error page. Anything
else escaping a route is a bug (a 500)::

    sangsaeng.errors.SangsaengError
    └── PortalError (400)
        ├── BadRequest (400)                 malformed input the schema could not catch
        ├── UnprocessableContent (422)       well-formed input whose content cannot be used
        │   ├── InvalidKey (422)             a public key that is malformed or of the wrong type
        │   └── ArtifactError (422)          a model artifact that cannot be read or does not fit
        ├── Unauthorized (401)               no, unknown, expired or revoked credentials
        ├── Forbidden (403)                  authenticated, but the role does not allow it
        ├── NotFound (404)                   absent, or not visible to the caller
        ├── Conflict (409)                   the state does not allow it (approve twice, reused invite)
        │   └── PolicyViolation (409)        release gate: privacy budget or metric threshold not met
        ├── Gone (410)                       expired invite, withdrawn release
        ├── PayloadTooLarge (413)
        └── TooManyRequests (429)            login rate limit
"""

from __future__ import annotations

from sangsaeng.errors import SangsaengError

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


class PortalError(SangsaengError):
    """A refused request: `status` is its HTTP status, `reason` says why."""

    status: int = 400

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.headers = headers


class BadRequest(PortalError):
    """Malformed input that the request schema could not catch (bad base64, a mismatched hash)."""

    status = 400


class UnprocessableContent(PortalError):
    """Well-formed input whose content cannot be used (a form that fails validation, a bad key)."""

    status = 422


class InvalidKey(UnprocessableContent):
    """A site public key that cannot be parsed or is not of the accepted type."""


class ArtifactError(UnprocessableContent):
    """A model artifact that cannot be read, or whose content does not fit its task."""


class Unauthorized(PortalError):
    """No, unknown, expired or revoked credentials; carries ``WWW-Authenticate: Bearer``."""

    status = 401

    def __init__(self, reason: str = "not authenticated"):
        super().__init__(reason, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(PortalError):
    """Authenticated, but the caller's role does not allow the action."""

    status = 403


class NotFound(PortalError):
    """Absent, or not visible to the caller (the two are not told apart)."""

    status = 404


class Conflict(PortalError):
    """The current state does not allow the action (approve twice, reuse an invite, a duplicate name)."""

    status = 409


class PolicyViolation(Conflict):
    """A release that may not be published: privacy budget exceeded or metric below threshold."""


class Gone(PortalError):
    """Existed, but no longer usable: an expired invite, a withdrawn release."""

    status = 410


class PayloadTooLarge(PortalError):
    """An upload over the portal's size limit."""

    status = 413


class TooManyRequests(PortalError):
    """Too many failed sign-ins for an account or an address (the login rate limit)."""

    status = 429
