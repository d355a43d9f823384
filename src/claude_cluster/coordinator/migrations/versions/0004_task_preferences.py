"""Task preferences: keywords of an issue raise an agent's score instead of requiring it

Until now "bug" or "fix" anywhere in an issue made the task *require* ``testing``, so on a
fleet without a ``testing`` agent it waited forever. Requirements now come only from
explicit labels (and the API); keyword areas move to ``tasks.preferences``. Live tasks
whose requirements are exactly what the old keyword analysis produced are split the same
way; requirements given explicitly through the API differ from that and are kept.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:50:00
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The analysis as it was when this migration was written (frozen: the code may move on).
_KEYWORDS = {
    "backend": ("api", "backend", "database", "server"),
    "frontend": ("ui", "frontend", "react", "component"),
    "testing": ("test", "testing", "bug", "fix"),
    "devops": ("deploy", "ci", "docker", "infra"),
}
_LABELS = {
    "claude-code-backend": "backend",
    "claude-code-frontend": "frontend",
    "claude-code-testing": "testing",
    "claude-code-infrastructure": "devops",
    "claude-code-database": "database",
    "claude-code-security": "security",
}
_LIVE = ("pending", "analyzing", "queued", "assigned", "in_progress", "testing", "review")


def _json(value: Any) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])


def _split(title: str, body: str, labels: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(what the old analysis required, the labels' requirements, the keyword areas)."""
    words = set(re.findall(r"[a-z0-9]+", f"{title}\n{body}".lower()))
    keywords = [area for area, keys in _KEYWORDS.items() if words.intersection(keys)]
    from_labels: list[str] = []
    for label in labels:
        area = _LABELS.get(label.strip().lower())
        if area and area not in from_labels:
            from_labels.append(area)
    old = list(keywords)
    old += [area for area in from_labels if area not in old]
    return old or ["general"], from_labels or ["general"], keywords


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("preferences", sa.JSON(), server_default="[]", nullable=False))
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.BigInteger()),
        sa.column("status", sa.String()),
        sa.column("title", sa.String()),
        sa.column("description", sa.Text()),
        sa.column("labels", sa.JSON()),
        sa.column("requirements", sa.JSON()),
        sa.column("preferences", sa.JSON()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            tasks.c.id, tasks.c.title, tasks.c.description, tasks.c.labels, tasks.c.requirements
        ).where(tasks.c.status.in_(_LIVE))
    ).all()
    for row in rows:
        old, required, preferred = _split(row.title, row.description or "", _json(row.labels))
        if _json(row.requirements) != old:
            continue  # given explicitly: kept as it is
        conn.execute(
            sa.update(tasks)
            .where(tasks.c.id == row.id)
            .values(requirements=required, preferences=preferred)
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("preferences")
