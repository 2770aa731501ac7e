"""When a run last reported, and why it was marked interrupted

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

A coordinator that dies hard (SIGKILL, a power cut) never reports its run's end, so the row
stayed "running" for ever. Each report now stamps `updated_at`; a running run without a report
for the portal's `run_stall_minutes` is shown as stalled, and the anchor may mark it
interrupted (`interrupted_reason`); `coordinator run --resume` reopens it. Existing rows keep
a null `updated_at`, read as their `created_at`.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("interrupted_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("training_run", schema=None) as batch_op:
        batch_op.drop_column("interrupted_reason")
        batch_op.drop_column("updated_at")
