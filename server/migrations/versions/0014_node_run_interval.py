"""Nodes keep how often their agent runs by itself, so a node that stopped reporting shows.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # NULL until each agent's next hello says it.
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_interval_s", sa.Float, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
