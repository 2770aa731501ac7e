"""The root of every exception Sangsaeng raises on purpose.

Each role package keeps its own documented subtree below `SangsaengError`::

    SangsaengError
     ├── models.errors.TaskSpecError / SiteDataError       task definitions, site exports
     ├── privacy.errors.PrivacyError                        budgets, policies, keys, reports
     ├── coordinator.errors.CoordinatorError                runs, deployment, certificates
     │    └── FederationError / DeploymentError / CertificateError
     ├── client.errors.ClientError                          the supplier's own commands
     │    └── NodeError / PortalClientError
     ├── portal.core.errors.PortalError                     HTTP errors of the portal
     ├── portal.web.errors.MessageCatalogueError            a page catalogue missing from the install
     ├── portal.uploader.UploadError                        a run directory that cannot be reported
     └── shared by every role (this module):
          ├── KeyFormatError                                a key file that is not what it claims
          ├── FileIntegrityError                            a file we wrote is corrupt or unsafely stored
          ├── ModelArtifactError                            a model artifact that cannot be read or does not fit
          ├── PortalRequestError                            a request to the portal that got no 2xx answer
          └── MissingExtraError                             an optional extra is not installed (`sangsaeng.extras`)

The shared errors carry no HTTP status: the portal's boundary turns one it meets (a
`ModelArtifactError` in an upload) into its own `ArtifactError` (422), and a role that calls
the portal may wrap a `PortalRequestError` in its own error (`client.errors.PortalClientError`).

A caller catches `SangsaengError` to tell "refused with a reason" from a bug.
"""

from __future__ import annotations

__all__ = [
    "SangsaengError", "KeyFormatError", "FileIntegrityError", "ModelArtifactError", "PortalRequestError",
    "MissingExtraError",
]  # fmt: skip


class SangsaengError(Exception):
    """Base class of every error Sangsaeng raises on purpose."""


class KeyFormatError(SangsaengError, ValueError):
    """Key material that is malformed, of the wrong type, or unsafely stored."""


class FileIntegrityError(SangsaengError):
    """A file Sangsaeng wrote is corrupt, truncated or unsafely stored."""


class ModelArtifactError(SangsaengError, ValueError):
    """A model artifact (`portal.artifact`'s format) that cannot be read, or whose content does not fit its task.

    Raised where the artifact is read: on a supplier's PC (`client predict`) it is the site's
    error; the portal answers it with HTTP 422 at its boundary.
    """


class PortalRequestError(SangsaengError):
    """A request to the portal's API that did not end in a 2xx answer (`sangsaeng.portal_api`).

    `url` is the URL asked, `status` the HTTP status (None when the portal could not be
    reached) and `detail` the portal's ``detail`` (or the transport error's text).
    """

    def __init__(self, message: str, *, method: str, url: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status
        self.detail = detail


class MissingExtraError(SangsaengError):
    """A feature needs an optional extra that is not installed; the message names the install command.

    `models.errors.MissingExtraError` is this class (the model zoo's image tasks raised it first).
    """
