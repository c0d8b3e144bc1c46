"""Who made each revision, why, its content hash, and manifests purged by it;
what selected each node's catalog.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.history import content_hash

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("revisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("author", sa.String(253), nullable=True))
        batch_op.add_column(sa.Column("message", sa.Text, nullable=True))
        batch_op.add_column(sa.Column("content_sha256", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("purged", sa.JSON, nullable=True))
        batch_op.add_column(sa.Column("origin", sa.String(16), nullable=True))
    # NULL: not recorded; such a catalog is compiled again at the node's next session.
    with op.batch_alter_table("catalogs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("selected", sa.JSON, nullable=True))
    # The hash depends only on the manifests every revision already holds, so
    # earlier revisions get theirs now; their author stays unknown (NULL).
    conn = op.get_bind()
    table = sa.table(
        "revisions",
        sa.column("id", sa.BigInteger),
        sa.column("manifests", sa.JSON),
        sa.column("content_sha256", sa.String),
    )
    for row in conn.execute(sa.select(table.c.id, table.c.manifests)).all():
        sources = {m["name"]: m["source"] for m in row.manifests}
        conn.execute(
            table.update().where(table.c.id == row.id).values(content_sha256=content_hash(sources))
        )


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
