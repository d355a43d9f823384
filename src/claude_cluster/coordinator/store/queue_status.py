"""The queue at a glance: tasks by status and the online agents' capacity and load."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from claude_cluster.coordinator.store.common import ONLINE_AGENTS, StoreBase
from claude_cluster.coordinator.store.tables import Agent, Task
from claude_cluster.domain.states import RUNNING_TASK_STATUSES


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
