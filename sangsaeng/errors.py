"""The root of every exception Sangsaeng raises on purpose.

Each role package keeps its own documented subtree below `SangsaengError`::

    SangsaengError
     ├── models.errors.TaskSpecError / SiteDataError       task definitions, site exports
     ├── privacy.errors.PrivacyError                        budgets, policies, keys, reports
     ├── coordinator.errors.CoordinatorError                runs, deployment, certificates
     ├── client.errors.ClientError                          the supplier's own commands
     ├── portal.core.errors.PortalError                     HTTP errors of the portal
     └── sangsaeng.errors.KeyFormatError                    a key file that is not what it claims

A caller catches `SangsaengError` to tell "refused with a reason" from a bug.
"""

from __future__ import annotations

__all__ = ["SangsaengError", "KeyFormatError", "FileIntegrityError"]


class SangsaengError(Exception):
    """Base class of every error Sangsaeng raises on purpose."""


class KeyFormatError(SangsaengError, ValueError):
    """Key material that is malformed, of the wrong type, or unsafely stored."""


class FileIntegrityError(SangsaengError):
    """A file Sangsaeng wrote is corrupt, truncated or unsafely stored."""
