"""The schema of Plumb 0.1.0: nodes, tokens, revisions, catalogs, reports, status, drift.

Plumb 0.1.0 created these tables with ``metadata.create_all`` and recorded no
revision. This migration creates exactly that schema, so a 0.1.0 store is
recognised by comparing its tables with what this creates, then stamped 0001
(server/store.py: migrate). Never edit it: released stores depend on it.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _serial_id() -> sa.Column[int]:
    # SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def upgrade() -> None:
    op.create_table(
        "catalogs",
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("node", "revision"),
    )
    op.create_table(
        "drift_events",
        _serial_id(),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("report_id", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(512), nullable=False),
        sa.Column("manifest", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("detected_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("report_id", "resource_id"),
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("enrolled_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False, server_default="0"),
        sa.Column("applied_revision", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("status_as_of", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("noop", sa.Boolean(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "resource_status",
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("resource_id", sa.String(512), nullable=False),
        sa.Column("manifest", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("controls", sa.JSON(), nullable=False),
        sa.Column("report_id", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node", "resource_id"),
    )
    op.create_table(
        "revisions",
        _serial_id(),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("manifests", sa.JSON(), nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("uses_left", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reports_node", "reports", ["node"])
    op.create_index("ix_reports_finished_at", "reports", ["finished_at"])
    op.create_index("ix_drift_events_node", "drift_events", ["node"])
    op.create_index("ix_drift_events_detected_at", "drift_events", ["detected_at"])


def downgrade() -> None:
    raise NotImplementedError("a store is never downgraded: restore a backup instead")
