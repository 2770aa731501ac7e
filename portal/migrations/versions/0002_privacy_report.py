"""signed privacy reports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

One row per training run: the coordinator's report.json bytes, its raw Ed25519 signature
and the coordinator's public key, checked by the portal at upload.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "privacy_report",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("report", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("public_key_pem", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_run.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("privacy_report", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_privacy_report_run_id"), ["run_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("privacy_report", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_privacy_report_run_id"))

    op.drop_table("privacy_report")
