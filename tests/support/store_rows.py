"""Rows the store tests start from: an idle agent and a queued task, built directly
through the repository (no HTTP)."""

from __future__ import annotations

from typing import Any

from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import Agent, Task
from claude_cluster.coordinator.store.tasks import NewTask
from claude_cluster.domain.states import Priority


async def add_idle_agents(repo: Repository, ids: list[str], **columns: Any) -> None:
    """Idle, ready agents ``ids`` with the specialty ``general`` (``columns`` override)."""
    now = utcnow()
    async with repo._sessions.begin() as s:
        for agent_id in ids:
            values: dict[str, Any] = {
                "name": agent_id,
                "url": "http://127.0.0.1:9",
                "registered_at": now,
                "last_heartbeat": now,
                "token_hash": "x",
                "status": "idle",
                "specialties": ["general"],
                **columns,
            }
            s.add(Agent(id=agent_id, **values))


async def create_task(repo: Repository, issue: int) -> Task:
    """A new queued task for issue ``issue`` of ``acme/app``."""
    task, created = await repo.create_task(
        NewTask(
            title=f"T{issue}",
            description="",
            github_repository="acme/app",
            github_issue_number=issue,
            repository_url="https://example.invalid/acme/app.git",
            priority=Priority.MEDIUM,
            requirements=[],
            labels=[],
            complexity="simple",
            estimated_duration_minutes=5,
        )
    )
    assert created, f"issue {issue} already had an open task"
    return task
