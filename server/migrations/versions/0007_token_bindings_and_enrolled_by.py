"""Token bindings, re-enroll tokens, revocation, and which token enrolled each node.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Added columns only, each nullable or with a default: SQLite adds them in
    # place. Tokens made before stay unbound (any name), plain (no re-enroll)
    # and unrevoked, as they were; nodes enrolled before have no token
    # recorded (NULL), since none was.
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("names", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("name_pattern", sa.String(length=253), nullable=True))
        batch_op.add_column(sa.Column("reenroll", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("revoked_at", sa.Float(), nullable=True))
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enrolled_by_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
