"""Waivers: accepted exceptions to compliance, with who approved them and until when.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "waivers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("control", sa.String(253), nullable=True),
        sa.Column("resource_id", sa.String(512), nullable=True),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("approver", sa.String(253), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
