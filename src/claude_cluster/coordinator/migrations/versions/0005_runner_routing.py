"""Routing by runner: the runners an agent offers, the runner a task needs

A repository's contract may name a runner (``claude``, ``codex``, ``aider``, ``command``).
Agents now say which runners they can run (``agents.runners``, NULL for an agent that has
not told: an older one), and a task that needs one (``tasks.required_runner``, from the
operator's contract or from an agent that refused it for lack of that runner) goes only to
an agent that offers it. Both columns start NULL: every existing task may go anywhere, as
before, and every agent tells its runners at its next heartbeat.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("runners", sa.JSON(), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("required_runner", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("required_runner")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("runners")
