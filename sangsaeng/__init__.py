"""Neutral ground shared by every role: nothing here belongs to the anchor, a supplier or the portal.

The five role packages (`coordinator`, `client`, `models`, `privacy`, `portal`) import from
here; this package imports none of them (see ``docs/architecture.md``)::

    errors.py     the root of every exception tree (`SangsaengError`)
    files.py      atomic, fsynced writes; owner-only (0600) files and their mode check
    signing.py    Ed25519 keys: load, sign, verify, fingerprint (one copy for every role)
    console.py    `fail`: how every command gives up (``error: ...`` on stderr, exit code 2)
    paths.py      where files live by default (the coordinator's key directory, deployment state)
    cli.py        the root ``sangsaeng`` command line; the one module here that imports the roles,
                  to mount each role's command group (``python -m sangsaeng``)
"""
