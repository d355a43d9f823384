"""Webhook deliveries: each delivery id recorded once (a redelivery is recognised), then
its outcome."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from claude_cluster.coordinator.store.common import StoreBase, utcnow
from claude_cluster.coordinator.store.tables import WebhookDelivery


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
