"""Neutral ground shared by every role: nothing here belongs to the anchor, a supplier or the portal.

The five role packages (`coordinator`, `client`, `models`, `privacy`, `portal`) import from
here; this package imports none of them, and none of their heavy dependencies (Flower,
torch, the portal server's FastAPI/SQL stack), so a supplier's PC can import all of it
(see "Import direction" in ``docs/architecture.md``)::

    errors.py       the root of every exception tree (`SangsaengError`) and the errors every role
                    shares: key format, file integrity, model artifact, portal request
    files.py        atomic, fsynced writes; owner-only (0600) files and their mode check
    signing.py      Ed25519 keys: load, sign, verify, fingerprint (one copy for every role)
    protocol.py     the wire protocol of a federated run: message keys and error-reply codes
    identity.py     the app's identity: bundle id, ClientApp/ServerApp references, installed version
    airgap.py       the air-gap setting: Flower and Ray must not phone home
    portal_api.py   one HTTP client for the portal's REST API (`PortalAPI`, `PortalRequestError`)
    console.py      `fail`: how every command gives up (``error: ...`` on stderr, exit code 2)
    paths.py        where files live by default (the coordinator's key directory, deployment state)
    extras.py       the optional extras (coordinator, portal, vision, all) and `require`: a command that
                    needs a missing one names its install command
    cli.py          the root ``sangsaeng`` command line; the one module here that imports the roles,
                    to mount each role's command group (``python -m sangsaeng``)
"""
