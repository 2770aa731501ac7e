"""Errors of a supplier site's own commands, with messages that name the file, key or portal answer.

Exception tree::

    SangsaengError (sangsaeng.errors: the root of every tree)
     └── ClientError
          ├── NodeError            `client start` cannot start the site's node: site key,
          │                        network certificate or SuperNode problems
          └── PortalClientError    a portal operation (enrol, pull a model, score with it) that
                                   the site or the portal refused, with the reason

Problems with the site's data or the coordinator's task during a round are not raised
across the network: the ClientApp answers them with an error reply
(`sangsaeng.protocol.ErrorCode`).
"""

from __future__ import annotations

from sangsaeng.errors import SangsaengError

__all__ = ["ClientError", "NodeError", "PortalClientError"]


class ClientError(SangsaengError):
    """Base of every error a supplier site's commands raise on purpose."""


class NodeError(ClientError):
    """A site node that cannot start: key, certificate, data or SuperNode problems."""


class PortalClientError(ClientError):
    """A portal operation the site refused or the portal refused, with the reason."""
