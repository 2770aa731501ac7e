"""Errors of the privacy layer.

Exception tree::

    SangsaengError
     └── PrivacyError
          ├── BudgetExhausted      a site refuses a round that would exceed its epsilon budget
          ├── PolicyError          a site's privacy policy or a DP request is unusable
          ├── SigningKeyError      the coordinator's signing key is missing, lost or unreadable
          ├── ReportInvalid        a privacy report fails its signature or its recomputation
          ├── AuditLogBroken       the hash chain of an audit log does not hold
          └── MembershipCheckError the membership-inference check cannot be run or its figures do not hold
"""

from __future__ import annotations

from models.errors import SangsaengError

__all__ = [
    "PrivacyError",
    "BudgetExhausted",
    "PolicyError",
    "SigningKeyError",
    "ReportInvalid",
    "AuditLogBroken",
    "MembershipCheckError",
]


class PrivacyError(SangsaengError):
    """Base of every privacy error."""


class BudgetExhausted(PrivacyError):
    """Training this round would take the site over its own epsilon budget."""


class PolicyError(PrivacyError):
    """A privacy policy or DP request cannot be honoured as given."""


class SigningKeyError(PrivacyError):
    """The coordinator's signing key is missing, lost or unreadable."""


class ReportInvalid(PrivacyError):
    """A privacy report's signature or numbers do not check out."""


class AuditLogBroken(PrivacyError):
    """An audit log entry was edited, removed or reordered."""


class MembershipCheckError(PrivacyError):
    """The membership-inference check cannot be run on these rows, or its recorded figures do not hang together."""
