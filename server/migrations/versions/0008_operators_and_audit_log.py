"""Operators with roles, the hash-chained audit log, and each revision's audit entry.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # New tables, and one nullable column: nothing existing is rewritten. A
    # store from before has no operators yet: plumb-server run (and migrate)
    # then records the operator certificate `plumb-server init` wrote under
    # <data>/operator as an admin (server/operators.py: adopt_bootstrap_operator).
    op.create_table(
        "operators",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("cert_serial", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=253), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("peer", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    head = op.create_table(
        "audit_head",
        sa.Column("chain", sa.String(length=16), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain"),
    )
    # The empty log: its head is "entry 0", whose hash the first entry chains to.
    op.bulk_insert(head, [{"chain": "audit", "last_id": 0, "last_hash": "0" * 64}])
    with op.batch_alter_table("revisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audit_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
