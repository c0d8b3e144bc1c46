"""Report sequences (a node's reports ordered by its agent's numbering) and clock offsets.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Added columns and an index only: SQLite alters these in place, so even a
    # store with months of reports is not copied.
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status_sequence", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("clock_offset_s", sa.Float(), nullable=True))
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sequence", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_reports_node_sequence", ["node", "sequence"], unique=False)


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
