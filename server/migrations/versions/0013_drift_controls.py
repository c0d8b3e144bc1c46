"""Drift events keep their resource's controls, so `plumb drift --control C` can ask.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # NULL for the events stored before: their controls were not kept, and
    # a control's query does not find them (it cannot know).
    with op.batch_alter_table("drift_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("controls", sa.JSON, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
