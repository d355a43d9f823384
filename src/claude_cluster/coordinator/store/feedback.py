"""Review feedback on a task: a follow-up run queued on the task's branch, feedback merged
into a queued follow-up, or kept (as ``feedback_deferred`` events) until the active run ends.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from claude_cluster.coordinator.store import transitions
from claude_cluster.coordinator.store.common import StoreBase, retry_conflicts, utcnow
from claude_cluster.coordinator.store.tables import Task, TaskEvent
from claude_cluster.domain.states import TERMINAL_TASK_STATUSES, TaskStatus
from claude_cluster.errors import Conflict


async def deferred_feedback(s: AsyncSession, task_id: int) -> list[str]:
    """The feedback held for the task's next follow-up, oldest first: every
    ``feedback_deferred`` event newer than the task's last ``feedback`` event (the one that
    queued a follow-up, which takes them all)."""
    last_taken = await s.scalar(
        select(func.max(TaskEvent.id)).where(
            TaskEvent.task_id == task_id, TaskEvent.kind == "feedback"
        )
    )
    waiting = (
        await s.scalars(
            select(TaskEvent)
            .where(
                TaskEvent.task_id == task_id,
                TaskEvent.kind == "feedback_deferred",
                TaskEvent.id > (last_taken or 0),
            )
            .order_by(TaskEvent.id)
        )
    ).all()
    texts = [str(e.details.get("feedback") or "") for e in waiting]
    return [t for t in texts if t]


class FeedbackQueries(StoreBase):
    @retry_conflicts
    async def add_feedback(self, task_id: int, feedback: str) -> tuple[Task, str]:
        """Take review feedback, one run at a time per task (so per pull request).

        Returns the task and what happened: ``queued`` (the task was in review: a follow-up
        run is queued), ``merged`` (a follow-up is queued but not started: the feedback
        joins it) or ``deferred`` (a run is active: the feedback waits for its end, see
        :meth:`take_deferred_feedback`).
        """
        async with self._tx() as s:
            task = await self._task_for_update(s, task_id)
            status = TaskStatus(task.status)
            if status in TERMINAL_TASK_STATUSES:
                raise Conflict(f"task {task_id} is {task.status}; feedback is not taken")
            now = utcnow()
            if status == TaskStatus.REVIEW:
                # feedback still held (a follow-up that failed left its own) goes along
                held = await deferred_feedback(s, task.id)
                await self._queue_feedback(s, task, "\n\n".join([*held, feedback]), now)
                return task, "queued"
            if status == TaskStatus.QUEUED and task.feedback:
                task.feedback = f"{task.feedback}\n\n{feedback}"
                task.updated_at = now
                # not "feedback": that kind marks deferred feedback as taken
                self._event(s, task.id, "feedback_merged", "more feedback for the queued follow-up")
                return task, "merged"
            self._event(
                s,
                task.id,
                "feedback_deferred",
                "feedback kept until the active run ends",
                {"feedback": feedback},
            )
            return task, "deferred"

    @retry_conflicts
    async def take_deferred_feedback(self, task_id: int) -> Task | None:
        """Queue the feedback deferred since the last follow-up, if the task is in review.

        Deferred feedback is every ``feedback_deferred`` event newer than the task's last
        ``feedback`` event (the one that queued a follow-up), so nothing is taken twice.
        """
        async with self._tx() as s:
            task = await self._task_for_update(s, task_id)
            if task.status != TaskStatus.REVIEW.value:
                return None
            texts = await deferred_feedback(s, task_id)
            if not texts:
                return None
            await self._queue_feedback(s, task, "\n\n".join(texts), utcnow())
            return task

    async def _queue_feedback(
        self, s: AsyncSession, task: Task, feedback: str, now: datetime
    ) -> None:
        task.feedback = feedback
        task.not_before = None
        await transitions.move_task(
            s,
            task,
            TaskStatus.QUEUED,
            now,
            kind="feedback",
            message="follow-up queued with review feedback",
        )
