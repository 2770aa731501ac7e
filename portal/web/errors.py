"""Errors of the web pages' own machinery, apart from refused requests (those are `portal.core.errors`)::

sangsaeng.errors.SangsaengError
└── MessageCatalogueError       a page-translation catalogue that is missing or malformed
                                (a broken install, found when the portal starts: no HTTP status)
"""

from __future__ import annotations

from sangsaeng.errors import SangsaengError

__all__ = ["MessageCatalogueError"]


class MessageCatalogueError(SangsaengError):
    """A message catalogue of the web pages (``portal/locale``) that is missing or cannot be read."""
