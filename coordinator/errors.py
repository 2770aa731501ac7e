"""Errors of the anchor's coordinator, with messages that name the run, process, file or site.

Exception tree::

    SangsaengError (sangsaeng.errors: the root of every tree)
     └── CoordinatorError
          ├── FederationError      a run cannot go on: too few healthy sites, nobody connected
          ├── DeploymentError      a SuperLink/gateway process that could not start, or a Flower
          │                        operation (``flwr supernode register``, ...) that failed
          └── CertificateError     a network certificate that is missing, expired, not yet valid,
                                   for the wrong host or not issued by the network CA

A supplier's problems reach the coordinator as Flower error replies (see
`sangsaeng.protocol.ErrorCode`), never as these exceptions.
"""

from __future__ import annotations

from sangsaeng.errors import SangsaengError

__all__ = ["CoordinatorError", "FederationError", "DeploymentError", "CertificateError"]


class CoordinatorError(SangsaengError):
    """Base of every error the coordinator raises on purpose."""


class FederationError(CoordinatorError):
    """The run cannot go on (too few healthy sites, nobody connected, ...)."""


class DeploymentError(CoordinatorError):
    """A deployment process that could not start, or a Flower operation that failed."""


class CertificateError(CoordinatorError):
    """A certificate that is missing, expired, not yet valid, for the wrong host or not from our CA."""
