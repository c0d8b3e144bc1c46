"""Certificate renewal: a node's renewed certificate not used yet; when its current one expires.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # NULL for every existing node: none has a renewal under way, and the
    # expiry of certificates issued before this revision was not recorded
    # (the agent still knows it, and renews by it).
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_cert_serial", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("cert_not_after", sa.Float(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
