"""The web portal: network membership, roles, model releases and auditor access.

Layout (FastAPI full-stack template style)::

    main.py          create_app(): the FastAPI application (API under /api/v1, web pages under /)
    core/config.py   Settings: one typed settings object (env SANGSAENG_PORTAL_*, DATABASE_URL)
    core/db.py       engine, sessions, Alembic migrations
    core/errors.py   the exception tree; every PortalError becomes a 4xx with its reason
    core/security.py password hashing (argon2), opaque API tokens, site keys, release signing (Ed25519)
    models.py        SQLModel tables and their Create/Update/Public schema families
    crud.py          database operations; services/: the flows, one module per area (lifecycle, releases, audit)
    api/             REST routes, dependencies (SessionDep, CurrentPrincipal) and access rules
    web/             server-rendered pages (Jinja2 templates in templates/)
    artifact.py      the signed model artifact format, shared with the client
    cli.py           ``sangsaeng portal ...``
"""
