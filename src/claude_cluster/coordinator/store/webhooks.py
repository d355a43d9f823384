"""Webhook deliveries: each delivery id recorded once (a redelivery is recognised), then
its outcome."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError

from claude_cluster.coordinator.store.common import StoreBase, utcnow
from claude_cluster.coordinator.store.tables import Task, TaskEvent, WebhookDelivery
from claude_cluster.domain.states import TERMINAL_TASK_STATUSES


class WebhookQueries(StoreBase):
    async def record_delivery(
        self, delivery_id: str, event: str, action: str | None, repository: str | None
    ) -> bool:
        """Store a webhook delivery; False when the id was seen before (a redelivery)."""
        try:
            async with self._tx() as s:
                s.add(
                    WebhookDelivery(
                        id=delivery_id,
                        event=event,
                        action=action,
                        repository=repository,
                        received_at=utcnow(),
                        status="received",
                    )
                )
            return True
        except IntegrityError:
            return False

    async def finish_delivery(
        self, delivery_id: str, status: str, reason: str | None = None, task_id: int | None = None
    ) -> None:
        async with self._tx() as s:
            delivery = await s.get(WebhookDelivery, delivery_id)
            if delivery is not None:
                delivery.status, delivery.reason, delivery.task_id = status, reason, task_id

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        async with self._sessions() as s:
            return await s.get(WebhookDelivery, delivery_id)

    # --- housekeeping ---------------------------------------------------------------------

    async def purge_deliveries(self, before: datetime) -> int:
        """Delete the deliveries received before ``before``; returns how many."""
        async with self._tx() as s:
            result = await s.execute(
                delete(WebhookDelivery).where(WebhookDelivery.received_at < before)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def purge_task_events(self, ended_before: datetime) -> int:
        """Delete the events of tasks that ended before ``ended_before`` (the tasks stay);
        returns how many."""
        ended = or_(
            Task.completed_at < ended_before,
            Task.failed_at < ended_before,
            Task.cancelled_at < ended_before,
        )
        old_tasks = select(Task.id).where(
            and_(Task.status.in_([st.value for st in TERMINAL_TASK_STATUSES]), ended)
        )
        async with self._tx() as s:
            result = await s.execute(delete(TaskEvent).where(TaskEvent.task_id.in_(old_tasks)))
            return int(getattr(result, "rowcount", 0) or 0)
