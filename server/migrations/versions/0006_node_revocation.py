"""Node revocation and decommission: when a node's certificate was revoked, when it was removed.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Two nullable columns, NULL for every existing node: none was revoked or
    # removed before this revision existed (SQLite adds them in place).
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("decommissioned_at", sa.Float(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
