"""tenant isolation: look-alike names and the anchor that owns an organisation

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Organisation and site names become unique after Unicode NFKC, case folding and collapsed
spaces: each table gets a key column (SHA-256 of the folded name), backfilled here, with a
unique index (organisations: portal-wide; sites: per federation), so the database refuses a
look-alike even when two requests race. The upgrade stops, naming the names, if existing rows
already clash; rename one of them and run it again.

`organisation.owner_org_id` records the anchor organisation that created an organisation
through the API; an anchor admin may create accounts only there and in its own organisation.
Backfill: an auditor organisation assigned only to federations of one anchor is owned by that
anchor; any other existing organisation has no owner.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import defaultdict

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OWNER_FK = "fk_organisation_owner_org_id_organisation"


def _key(name: str) -> str:
    # Frozen copy of portal.models.name_key as of this revision: a migration must not change
    # meaning when the application code does later.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return hashlib.sha256(" ".join(folded.split()).encode("utf-8")).hexdigest()


def _clashes(rows: list[tuple[int | None, int, str]]) -> list[tuple[int | None, str]]:
    """(scope, "'a' / 'A'") for each group of names in one scope that share a key."""
    groups: dict[tuple[int | None, str], list[str]] = defaultdict(list)
    for scope, _, name in rows:
        groups[(scope, _key(name))].append(name)
    return [(scope, " / ".join(map(repr, names))) for (scope, _), names in groups.items() if len(names) > 1]


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("owner_org_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("membership", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))

    orgs: list[tuple[int | None, int, str]] = [
        (None, r.id, r.name) for r in bind.execute(sa.text("SELECT id, name FROM organisation ORDER BY id"))
    ]
    sites = [
        (r.federation_id, r.id, r.site_name)
        for r in bind.execute(sa.text("SELECT id, federation_id, site_name FROM membership ORDER BY id"))
    ]
    problems = [f"organisations {names}" for _, names in _clashes(orgs)]
    problems += [f"sites of federation {fid}: {names}" for fid, names in _clashes(sites)]
    if problems:
        raise RuntimeError(
            "cannot make names unique after Unicode NFKC and case folding; these names clash, rename one of each "
            f"and migrate again: {'; '.join(problems)}"
        )
    for _, org_id, name in orgs:
        bind.execute(sa.text("UPDATE organisation SET name_key = :k WHERE id = :i"), {"k": _key(name), "i": org_id})
    for _, membership_id, name in sites:
        bind.execute(
            sa.text("UPDATE membership SET site_key = :k WHERE id = :i"), {"k": _key(name), "i": membership_id}
        )
    anchors_of: dict[int, set[int]] = defaultdict(set)
    for row in bind.execute(
        sa.text(
            "SELECT a.organisation_id, f.anchor_org_id FROM auditor_assignment a "
            "JOIN federation f ON f.id = a.federation_id"
        )
    ):
        anchors_of[row.organisation_id].add(row.anchor_org_id)
    for org_id, anchors in anchors_of.items():
        if len(anchors) == 1:
            bind.execute(
                sa.text("UPDATE organisation SET owner_org_id = :o WHERE id = :i"), {"o": anchors.pop(), "i": org_id}
            )

    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.alter_column("name_key", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(batch_op.f("ix_organisation_name_key"), ["name_key"], unique=True)
        batch_op.create_index(batch_op.f("ix_organisation_owner_org_id"), ["owner_org_id"], unique=False)
        batch_op.create_foreign_key(_OWNER_FK, "organisation", ["owner_org_id"], ["id"])
    with op.batch_alter_table("membership", schema=None) as batch_op:
        batch_op.alter_column("site_key", existing_type=sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False)
        batch_op.create_index("ix_membership_federation_site_key", ["federation_id", "site_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("membership", schema=None) as batch_op:
        batch_op.drop_index("ix_membership_federation_site_key")
        batch_op.drop_column("site_key")
    with op.batch_alter_table("organisation", schema=None) as batch_op:
        batch_op.drop_constraint(_OWNER_FK, type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_organisation_owner_org_id"))
        batch_op.drop_index(batch_op.f("ix_organisation_name_key"))
        batch_op.drop_column("owner_org_id")
        batch_op.drop_column("name_key")
