"""Fault tolerance: agent readiness, delivery fencing, durable webhook intake, cluster
leases and once-marks

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("not_ready_reason", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("fault_streak", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(
            sa.Column("delivery_confirmed_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("payload", sa.Text(), nullable=True))
        batch.add_column(sa.Column("issue_key", sa.String(length=600), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_table(
        "cluster_leases",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_leases")),
    )
    op.create_table(
        "once_marks",
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_once_marks")),
    )


def downgrade() -> None:
    op.drop_table("once_marks")
    op.drop_table("cluster_leases")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    with op.batch_alter_table("webhook_deliveries") as batch:
        for column in ("processed_at", "next_attempt_at", "attempts", "issue_key", "payload"):
            batch.drop_column(column)
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("delivery_confirmed_at")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("fault_streak")
        batch.drop_column("not_ready_reason")
