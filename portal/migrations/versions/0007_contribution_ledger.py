"""contribution ledger and the minimum contribution for release access

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

A run's contribution scores (results.json "contribution", issue 16): one `contribution_run`
row per run (method, metric, inputs, total gain, the methods not available and why) and one
`contribution_score` row per run and site (records, rounds trained, data share, utility,
utility share, leave-one-out, flag, and the site's metric alone and with the network), tied
to the site's membership. Each federation gains the
minimum contribution for release access, off (null) for every existing federation.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contribution_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("metric", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("total_gain", sa.Float(), nullable=True),
        sa.Column("not_available", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["federation_id"], ["federation.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["training_run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("contribution_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_contribution_run_run_id"), ["run_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_contribution_run_federation_id"), ["federation_id"], unique=False)
    op.create_table(
        "contribution_score",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("membership_id", sa.Integer(), nullable=False),
        sa.Column("site_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("rounds_trained", sa.Integer(), nullable=False),
        sa.Column("data_share", sa.Float(), nullable=False),
        sa.Column("utility", sa.Float(), nullable=True),
        sa.Column("utility_share", sa.Float(), nullable=True),
        sa.Column("leave_one_out", sa.Float(), nullable=True),
        sa.Column("flag", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("alone", sa.Float(), nullable=True),
        sa.Column("with_network", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["federation_id"], ["federation.id"]),
        sa.ForeignKeyConstraint(["membership_id"], ["membership.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["training_run.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "site_name"),
    )
    with op.batch_alter_table("contribution_score", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_contribution_score_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_contribution_score_federation_id"), ["federation_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_contribution_score_membership_id"), ["membership_id"], unique=False)
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("min_contribution_share", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("contribution_basis", sa.String(length=20), nullable=False, server_default="utility_share")
        )


def downgrade() -> None:
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.drop_column("contribution_basis")
        batch_op.drop_column("min_contribution_share")
    with op.batch_alter_table("contribution_score", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contribution_score_membership_id"))
        batch_op.drop_index(batch_op.f("ix_contribution_score_federation_id"))
        batch_op.drop_index(batch_op.f("ix_contribution_score_run_id"))
    op.drop_table("contribution_score")
    with op.batch_alter_table("contribution_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contribution_run_federation_id"))
        batch_op.drop_index(batch_op.f("ix_contribution_run_run_id"))
    op.drop_table("contribution_run")
