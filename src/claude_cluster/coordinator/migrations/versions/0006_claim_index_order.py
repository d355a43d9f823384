"""The claim's index in the claim's order: priority_rank descending, then age

A claim reads the most urgent queued tasks first, then the oldest. With the index
ascending throughout, that order needed one query per priority (or a sort of the whole
queue); ordered (status, priority_rank DESC, created_at, id) it is one read that stops at
its LIMIT.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_claim")
    op.create_index(
        "ix_tasks_claim", "tasks", ["status", sa.column("priority_rank").desc(), "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_claim", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.create_index("ix_tasks_claim", ["status", "priority_rank", "created_at"])
