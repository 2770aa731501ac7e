"""pinned coordinator key and DP policy per federation

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

Each federation pins the Ed25519 public key its coordinator signs privacy reports with
(PEM, fingerprint, when pinned) and may set a DP policy (`dp_max_epsilon`: the most epsilon
a site may spend in a released run). A stored privacy report records whether it was
verified against the pinned key; reports stored before this revision were checked against
the key sent with them, so they are marked false.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("coordinator_key_pem", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True)
        )
        batch_op.add_column(
            sa.Column("coordinator_key_fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(sa.Column("coordinator_key_pinned_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("dp_max_epsilon", sa.Float(), nullable=True))
    with op.batch_alter_table("privacy_report", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("verified_with_pinned_key", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("privacy_report", schema=None) as batch_op:
        batch_op.drop_column("verified_with_pinned_key")
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.drop_column("dp_max_epsilon")
        batch_op.drop_column("coordinator_key_pinned_at")
        batch_op.drop_column("coordinator_key_fingerprint")
        batch_op.drop_column("coordinator_key_pem")
