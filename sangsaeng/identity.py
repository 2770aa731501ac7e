"""The app's identity: what the coordinator's bundle names and what a supplier site checks.

The coordinator writes a Flower app bundle that carries no code, only this identity
(publisher/name, version, the ServerApp and ClientApp references); a supplier's node runs
only the ClientApp of the Sangsaeng version it installed, and refuses a bundle that names
anything else. Both sides read the names here, so they cannot drift apart.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["APP_ID", "CLIENTAPP_REF", "SERVERAPP_REF", "FAB_ID", "sangsaeng_version"]

APP_ID = "sangsaeng"  # publisher and app name of the bundle
FAB_ID = f"{APP_ID}/{APP_ID}"  # Flower's "publisher/name" of the bundle
CLIENTAPP_REF = "client.client_app:app"
SERVERAPP_REF = "coordinator.server_app:app"


def sangsaeng_version() -> str:
    """The installed Sangsaeng version ("0.0.0" when running from a source tree without install)."""
    try:
        return metadata.version("sangsaeng")
    except metadata.PackageNotFoundError:
        return "0.0.0"
