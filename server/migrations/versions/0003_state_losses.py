"""What agents lost of their own state: a damaged report spool, a cached catalog rejected.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A new table: no existing row changes, so nothing to fill in.
    op.create_table(
        "state_losses",
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("what", sa.String(length=32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=True),
        sa.Column("found_at", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node", "id"),
    )


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
