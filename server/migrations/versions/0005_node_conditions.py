"""Node conditions: what each node's agent last said is wrong with it now.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # One nullable column: SQLite adds it in place (NULL: never said, as from
    # an agent older than conditions).
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conditions", sa.JSON(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
