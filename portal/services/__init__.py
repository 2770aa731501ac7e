"""The portal's flows, one module per area; the API routes and the web pages both call them.

Each flow checks the caller's role (via `portal.access`), refuses bad state with a
`PortalError` that names the problem, records the change in the audit trail and commits.
Nothing is changed when a check fails. Import a flow from its area's module::

    federations.py   create a federation, assign its auditors
    enrolment.py     invite a supplier's site; the site enrols its public key
    memberships.py   the membership lifecycle (TRANSITIONS) and the admitted site keys
    tokens.py        coordinator tokens: issue, list, revoke
    runs.py          the coordinator reports runs; each role sees what it may
    privacy.py       per-site privacy spend; the coordinator's signed privacy reports
    contributions.py the contribution ledger per federation and release; the minimum contribution
    releases.py      candidate upload, release gate, approval, signed publication, withdrawal, download
    audit.py         a federation's audit trail and its hash-chain check
    organisations.py the organisations each caller sees; the anchor creating them
    users.py         the anchor creating accounts; one's own name and password
"""
