"""A task's event log: reading it, and the once-only marks the GitHub loop claims a
comment with (so replicas and restarts post it at most once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from claude_cluster.coordinator.store.common import StoreBase, get_or_raise, retry_conflicts
from claude_cluster.coordinator.store.tables import Task, TaskEvent
from claude_cluster.domain.states import TaskStatus


class EventQueries(StoreBase):
    async def list_events(
        self, task_id: int, *, after_id: int = 0, limit: int = 500
    ) -> Sequence[TaskEvent]:
        async with self._sessions() as s:
            await get_or_raise(s, Task, task_id, "task")
            query = (
                select(TaskEvent)
                .where(TaskEvent.task_id == task_id, TaskEvent.id > after_id)
                .order_by(TaskEvent.id)
                .limit(limit)
            )
            return (await s.scalars(query)).all()

    @retry_conflicts
    async def add_task_event(self, task_id: int, kind: str, message: str) -> None:
        """Note something on a task's log that changes nothing else."""
        async with self._tx() as s:
            await get_or_raise(s, Task, task_id, "task")
            self._event(s, task_id, kind, message)

    @retry_conflicts
    async def mark_once(self, task_id: int, kind: str, message: str) -> bool:
        """Record a ``kind`` event for the task unless one exists: ``True`` the first time.

        The GitHub loop claims a comment with it before posting, so replicas and restarts
        post it at most once.
        """
        async with self._tx() as s:
            task = await self._task_for_update(s, task_id)
            seen = await s.scalar(
                select(TaskEvent.id)
                .where(TaskEvent.task_id == task.id, TaskEvent.kind == kind)
                .limit(1)
            )
            if seen is not None:
                return False
            self._event(s, task.id, kind, message)
            return True

    async def latest_event_message(self, task_id: int, kind: str) -> str | None:
        """The message of the task's newest ``kind`` event (a progress comment's id)."""
        query = (
            select(TaskEvent.message)
            .where(TaskEvent.task_id == task_id, TaskEvent.kind == kind)
            .order_by(TaskEvent.id.desc())
            .limit(1)
        )
        async with self._sessions() as s:
            return await s.scalar(query)

    async def run_event_details(self, run_id: int, kind: str) -> dict[str, Any] | None:
        """The data of the run's newest ``kind`` event, or None when it reported none."""
        query = (
            select(TaskEvent.details)
            .where(TaskEvent.run_id == run_id, TaskEvent.kind == kind)
            .order_by(TaskEvent.id.desc())
            .limit(1)
        )
        async with self._sessions() as s:
            details = await s.scalar(query)
        return details if isinstance(details, dict) else None

    async def run_phase(self, run_id: int) -> str | None:
        """The step a run last reported (its newest ``phase`` event), or None."""
        phase = (await self.run_event_details(run_id, "phase") or {}).get("phase")
        return phase if isinstance(phase, str) else None

    async def tasks_without_event(
        self,
        statuses: Sequence[TaskStatus],
        kind: str,
        *,
        repositories: Sequence[str],
        limit: int = 100,
    ) -> Sequence[Task]:
        """Tasks of ``repositories`` in ``statuses`` with no ``kind`` event yet, oldest first."""
        marked = select(TaskEvent.id).where(TaskEvent.task_id == Task.id, TaskEvent.kind == kind)
        query = (
            select(Task)
            .where(
                Task.status.in_([st.value for st in statuses]),
                Task.github_repository.in_(list(repositories)),
                ~marked.exists(),
            )
            .order_by(Task.id)
            .limit(limit)
        )
        async with self._sessions() as s:
            return (await s.scalars(query)).all()
