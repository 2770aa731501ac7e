"""The network a federation's sites join: its CA certificate, that certificate's fingerprint, the SuperLink address.

Revision ID: 0006
Revises: 0005

Enrolment hands the CA certificate and the address to each site; invitations carry the
fingerprint, which the site checks against the certificate it receives.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network_ca_pem", sqlmodel.sql.sqltypes.AutoString(length=20000), nullable=True))
        batch_op.add_column(
            sa.Column("network_ca_fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(sa.Column("superlink_address", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.drop_column("superlink_address")
        batch_op.drop_column("network_ca_fingerprint")
        batch_op.drop_column("network_ca_pem")
