"""Differential privacy for supplier sites and the coordinator, and the evidence that it held.

Two guarantees, each accounted and recorded (see ``docs/privacy.md``):

- record-level DP at each site: DP-SGD on the site's own rows, against the site's own
  budget, which the site enforces whatever the coordinator asks;
- supplier-level DP at the coordinator: clipped, noised aggregation of the sites' updates.

Modules::

    accounting.py   epsilon of a DP-SGD history with Opacus' accountants, by name ("rdp", "prv")
    dp_sgd.py       record-level DP-SGD at a site (Opacus; per-sample clipping, Gaussian noise)
    policy.py       a site's own privacy policy, and the DP request a coordinator may send
    ledger.py       a site's persisted privacy ledger: what each round cost, refused over budget
    central.py      supplier-level DP at the coordinator (Flower's server-side DP wrappers)
    audit.py        an append-only, hash-chained audit log of privacy events
    keys.py         the coordinator's Ed25519 signing key (formats in `sangsaeng.signing`)
    report.py       the signed privacy report of a run, and its independent verification
    cli.py          ``sangsaeng privacy``: what an auditor and the anchor run to check the claims
    errors.py       the exception tree (`PrivacyError` and below)

Nothing here imports the coordinator, the client or the portal: both roles use it.
"""
