"""The ``sangsaeng`` command line: each role's command group, mounted from that role's own folder.

sangsaeng demo | simulate | tasks   federations on one machine (coordinator/cli.py)
sangsaeng coordinator ...           the anchor on Flower's deployment runtime (coordinator/deploy_cli.py)
sangsaeng client ...                a supplier site (client/cli.py)
sangsaeng portal ...                the membership and release portal (portal/cli.py)
sangsaeng privacy ...               privacy reports, audit logs, the coordinator's key (privacy/cli.py)
sangsaeng network up | down         the whole network on this machine, real processes (coordinator/network_cli.py)

This module is the one place in the neutral package that imports the roles: it only puts
their groups side by side.
"""

from __future__ import annotations

from sangsaeng import airgap

airgap.apply()  # before any role imports Flower

import typer  # noqa: E402

from client import cli as client_cli  # noqa: E402
from coordinator import cli as coordinator_cli  # noqa: E402
from coordinator import deploy_cli, network_cli  # noqa: E402
from portal import cli as portal_cli  # noqa: E402
from privacy import cli as privacy_cli  # noqa: E402

__all__ = ["app", "main"]

app = typer.Typer(help="Sangsaeng: federated learning for manufacturing supply chains.", no_args_is_help=True)
app.add_typer(coordinator_cli.commands)  # no name: demo, simulate and tasks sit at the top
app.add_typer(client_cli.app, name="client")
app.add_typer(privacy_cli.app, name="privacy")
app.add_typer(portal_cli.app, name="portal")
app.add_typer(deploy_cli.app, name="coordinator")
app.add_typer(network_cli.app, name="network")


def main() -> None:
    """Run the ``sangsaeng`` command line."""
    app()


if __name__ == "__main__":
    main()
