"""Why a node has no catalog, and the revision each node's status was reported at.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "catalog_problems",
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node", "revision"),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status_revision", sa.BigInteger(), server_default="0", nullable=False)
        )
    # A node's current status is one report's (every resource_status row of a
    # node names the same report): its revision is the status's revision.
    # Without this, every node would count as pending until it reports again.
    op.execute(
        """
        UPDATE nodes SET status_revision = COALESCE((
            SELECT reports.revision FROM reports
            WHERE reports.id = (
                SELECT resource_status.report_id FROM resource_status
                WHERE resource_status.node = nodes.name LIMIT 1
            )
        ), 0)
        """
    )


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
