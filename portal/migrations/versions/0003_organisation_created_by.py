"""who created a supplier organisation

Revision ID: 0003_org_created_by
Revises: 0002
Create Date: 2026-12-01

`organisation.created_by_org_id`: the anchor whose invite created the organisation. An invite
by name attaches to an existing organisation without its own admin only for that anchor
(issue 12, finding 2). Existing organisations get NULL: none is controlled by an anchor, so
their next invite from any anchor needs the organisation's own admin to enrol.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_org_created_by"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_by_org_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_organisation_created_by_org_id_organisation", "organisation", ["created_by_org_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.drop_constraint("fk_organisation_created_by_org_id_organisation", type_="foreignkey")
        batch_op.drop_column("created_by_org_id")
