"""Where Sangsaeng keeps its files on a machine unless told otherwise."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HOME", "DEFAULT_KEY_DIR", "DEFAULT_DEPLOY_STATE", "PORTAL_TOKEN_FILE"]

HOME = Path.home() / ".sangsaeng"
# The coordinator's Ed25519 signing key (privacy reports); the same place for demo, simulate and deployed runs,
# so an auditor sees one key per coordinator.
DEFAULT_KEY_DIR = HOME / "coordinator"
DEFAULT_DEPLOY_STATE = HOME / "coordinator-deploy"  # `sangsaeng coordinator ...`: CA, certificates, SuperLink state
PORTAL_TOKEN_FILE = HOME / "portal-token"  # `sangsaeng portal login` stores the session token here (0600)
