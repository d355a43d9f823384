"""The queue at a glance: tasks by status and the online agents' capacity and load, and
why a queued task waits (no online, ready agent has what it requires)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from claude_cluster.coordinator.store.common import ONLINE_AGENTS, StoreBase, utcnow
from claude_cluster.coordinator.store.tables import Agent, Task
from claude_cluster.domain import scoring
from claude_cluster.domain.states import RUNNING_TASK_STATUSES, TaskStatus

#: queued tasks read for the wait gauges at most (the oldest first)
_WAIT_SCAN_LIMIT = 5000


@dataclass(frozen=True)
class QueueWaits:
    """How long the queue has waited and how many tasks no agent can take."""

    #: seconds the longest-waiting ready queued task has waited (0 when none waits)
    oldest_seconds: float
    #: queued tasks no online, ready agent has the requirements for
    unmatched: int


@dataclass
class QueueStatus:
    pending_tasks: int
    active_tasks: int
    completed_tasks: int
    failed_tasks: int
    available_nodes: int
    total_capacity: int
    current_load: float
    by_status: dict[str, int] = field(default_factory=dict)


class QueueQueries(StoreBase):
    async def queue_status(self) -> QueueStatus:
        async with self._sessions() as s:
            rows = (await s.execute(select(Task.status, func.count()).group_by(Task.status))).all()
            by_status = {status: count for status, count in rows}
            agents = (await s.scalars(select(Agent))).all()
            online = [
                a
                for a in agents
                if a.status in ONLINE_AGENTS and not a.draining and a.not_ready_reason is None
            ]
            capacity = sum(a.max_concurrent_tasks for a in online)
            used = sum(a.active_task_count for a in online)
            return QueueStatus(
                pending_tasks=by_status.get("queued", 0) + by_status.get("pending", 0),
                active_tasks=sum(by_status.get(st.value, 0) for st in RUNNING_TASK_STATUSES),
                completed_tasks=by_status.get("completed", 0),
                failed_tasks=by_status.get("failed", 0),
                available_nodes=sum(
                    1 for a in online if a.active_task_count < a.max_concurrent_tasks
                ),
                total_capacity=capacity,
                current_load=round(used / capacity, 4) if capacity else 0.0,
                by_status=by_status,
            )

    async def _ready_agent_views(self) -> list[scoring.AgentView]:
        """The agents that may be given work, busy or not: online, not draining, ready."""
        async with self._sessions() as s:
            agents = (
                await s.scalars(
                    select(Agent).where(
                        Agent.status.in_(ONLINE_AGENTS),
                        Agent.draining.is_(False),
                        Agent.not_ready_reason.is_(None),
                    )
                )
            ).all()
        return [
            scoring.AgentView(
                id=a.id,
                specialties=a.specialties,
                capabilities=a.capabilities,
                active=a.active_task_count,
                capacity=a.max_concurrent_tasks,
                completed=a.total_tasks_completed,
                failed=a.total_tasks_failed,
                average_duration_seconds=a.average_task_duration,
                runners=a.runners,
            )
            for a in agents
        ]

    async def waiting_reasons(self, tasks: Sequence[Task]) -> dict[int, str]:
        """Why each queued task of ``tasks`` waits, when no agent that may be given work can
        take it (``waiting for an agent with: testing``); busy agents do not count."""
        queued = [t for t in tasks if t.status == TaskStatus.QUEUED.value]
        if not queued:
            return {}
        views = await self._ready_agent_views()
        reasons = {
            t.id: scoring.waiting_for(views, t.requirements, t.required_runner) for t in queued
        }
        return {task_id: reason for task_id, reason in reasons.items() if reason}

    async def queue_waits(self, now: datetime | None = None) -> QueueWaits:
        now = now or utcnow()
        async with self._sessions() as s:
            rows = (
                await s.execute(
                    select(Task.queued_at, Task.requirements, Task.required_runner)
                    .where(Task.status == TaskStatus.QUEUED.value)
                    .order_by(Task.queued_at)
                    .limit(_WAIT_SCAN_LIMIT)
                )
            ).all()
        views = await self._ready_agent_views()
        # a retry is queued from the end of its back-off: it waits from then on
        waited = [(now - at).total_seconds() for at, _, _ in rows if at is not None and at <= now]
        unmatched = sum(
            1 for _, required, runner in rows if scoring.waiting_for(views, required, runner)
        )
        return QueueWaits(oldest_seconds=max(waited, default=0.0), unmatched=unmatched)
