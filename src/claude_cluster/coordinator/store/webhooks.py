"""Webhook deliveries: the durable intake queue.

A verified delivery is recorded with its payload (status ``received``) in one transaction;
workers in every coordinator process claim due deliveries from here
(:meth:`WebhookQueries.claim_deliveries`), process them and mark them processed, or
schedule a retry. A claim is a lease (``next_attempt_at`` moves past the claim's end), so
a claim whose process died is taken again once it runs out. The number of attempts fences
a claim: only the claim that made attempt *n* may finish the delivery or renew its lease.

Per-issue order: a delivery is claimable only while no older delivery of the same
``issue_key`` is still ``received`` (due, in back-off or claimed), so deliveries for one
issue are processed one at a time in received order, across workers and replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from claude_cluster.coordinator.store.common import StoreBase, retry_conflicts, utcnow
from claude_cluster.coordinator.store.tables import Task, TaskEvent, WebhookDelivery
from claude_cluster.domain.states import TERMINAL_TASK_STATUSES

#: what recording a delivery found: a new delivery, one recorded but not processed yet
#: (a redelivery is a nudge), or one already processed (a duplicate)
Recorded = Literal["new", "pending", "done"]

RECEIVED = "received"


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a worker holds until ``attempt``'s lease runs out."""

    id: str
    event: str
    payload: str
    issue_key: str | None
    attempt: int


class WebhookQueries(StoreBase):
    async def record_delivery(
        self,
        delivery_id: str,
        event: str,
        action: str | None,
        repository: str | None,
        *,
        payload: str | None = None,
        issue_key: str | None = None,
        status: str = RECEIVED,
        reason: str | None = None,
    ) -> Recorded:
        """Store a webhook delivery (with its payload while it waits to be processed).

        A delivery finished at once (a ping, an ignored event) is stored with its final
        ``status`` and ``reason``. For an id seen before: ``"pending"`` when it is not
        processed yet (a row recorded without its payload gets it now), ``"done"`` when it is.
        """
        now = utcnow()
        done = status != RECEIVED
        try:
            async with self._tx() as s:
                s.add(
                    WebhookDelivery(
                        id=delivery_id,
                        event=event,
                        action=action,
                        repository=repository,
                        received_at=now,
                        status=status,
                        reason=reason,
                        payload=None if done else payload,
                        issue_key=issue_key,
                        attempts=0,
                        next_attempt_at=None if done else now,
                        processed_at=now if done else None,
                    )
                )
            return "new"
        except IntegrityError:
            pass
        async with self._tx() as s:
            row = await s.get(WebhookDelivery, delivery_id)
            if row is None or row.status != RECEIVED:
                return "done"
            if row.payload is None and payload is not None and not done:
                row.payload, row.issue_key = payload, issue_key
                row.next_attempt_at = now
            return "pending"

    @retry_conflicts
    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        """Claim up to ``limit`` due deliveries, oldest first, at most one per issue key.

        A due delivery is ``received``, has its payload, its ``next_attempt_at`` has passed,
        and no older delivery of its issue is still ``received``. Each claimed delivery's
        attempt count goes up and its ``next_attempt_at`` moves ``lease_seconds`` ahead.
        PostgreSQL skips the rows another worker has locked; SQLite serves one process.
        """
        older = aliased(WebhookDelivery)
        d = WebhookDelivery
        blocked = exists().where(
            older.issue_key == d.issue_key,
            older.status == RECEIVED,
            or_(
                older.received_at < d.received_at,
                and_(older.received_at == d.received_at, older.id < d.id),
            ),
        )
        async with self._tx() as s:
            now = utcnow()
            query = (
                select(d)
                .where(
                    d.status == RECEIVED,
                    d.payload.is_not(None),
                    or_(d.next_attempt_at.is_(None), d.next_attempt_at <= now),
                    or_(d.issue_key.is_(None), ~blocked),
                )
                .order_by(d.received_at, d.id)
                .limit(limit)
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True, of=d)
            rows = (await s.scalars(query)).all()
            until = now + timedelta(seconds=lease_seconds)
            claimed = []
            for row in rows:
                row.attempts = (row.attempts or 0) + 1
                row.next_attempt_at = until
                assert row.payload is not None
                claimed.append(
                    ClaimedDelivery(row.id, row.event, row.payload, row.issue_key, row.attempts)
                )
            return claimed

    @retry_conflicts
    async def renew_delivery(self, delivery_id: str, attempt: int, lease_seconds: float) -> bool:
        """Extend the claim of ``attempt``; False when the claim was lost (taken again)."""
        return await self._update_held(
            delivery_id, attempt, next_attempt_at=utcnow() + timedelta(seconds=lease_seconds)
        )

    @retry_conflicts
    async def finish_delivery(
        self,
        delivery_id: str,
        status: str,
        reason: str | None = None,
        task_id: int | None = None,
        *,
        attempt: int | None = None,
    ) -> bool:
        """Record the outcome (``processed``, ``ignored`` or ``error``: given up); the
        payload goes (an error keeps it, for a look). With ``attempt``, only that claim may
        finish it; False when it cannot (the claim was lost, or it is finished already)."""
        async with self._tx() as s:
            query = update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
            if attempt is not None:
                query = query.where(_held(delivery_id, attempt))
            values: dict[str, object] = {
                "status": status,
                "reason": reason,
                "task_id": task_id,
                "processed_at": utcnow(),
                "next_attempt_at": None,
            }
            if status != "error":
                values["payload"] = None
            result = await s.execute(query.values(**values))
            return bool(getattr(result, "rowcount", 0))

    @retry_conflicts
    async def retry_delivery(
        self, delivery_id: str, attempt: int, reason: str, retry_at: datetime
    ) -> bool:
        """Put a failed attempt back for ``retry_at``; False when the claim was lost."""
        return await self._update_held(
            delivery_id, attempt, reason=reason, next_attempt_at=retry_at
        )

    @retry_conflicts
    async def release_delivery(self, delivery_id: str, attempt: int) -> None:
        """Give a claim back unfinished (a stopping coordinator): due again now, and the
        attempt it made does not count."""
        await self._update_held(
            delivery_id, attempt, next_attempt_at=utcnow(), attempts=attempt - 1
        )

    async def _update_held(self, delivery_id: str, attempt: int, **values: object) -> bool:
        """Set ``values`` on the delivery while ``attempt``'s claim still holds it; False
        when it does not (taken again, or finished)."""
        async with self._tx() as s:
            result = await s.execute(
                update(WebhookDelivery).where(_held(delivery_id, attempt)).values(**values)
            )
            return bool(getattr(result, "rowcount", 0))

    async def waiting_deliveries(self) -> tuple[int, datetime | None]:
        """How many deliveries wait to be processed, and when the oldest was received."""
        query = select(func.count(), func.min(WebhookDelivery.received_at)).where(
            WebhookDelivery.status == RECEIVED, WebhookDelivery.payload.is_not(None)
        )
        async with self._sessions() as s:
            count, oldest = (await s.execute(query)).one()
        return int(count or 0), oldest

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        async with self._sessions() as s:
            return await s.get(WebhookDelivery, delivery_id)

    # --- housekeeping ---------------------------------------------------------------------

    async def purge_deliveries(self, before: datetime) -> int:
        """Delete the deliveries received before ``before``, except those still waiting to
        be processed (they keep their payload until then); returns how many."""
        async with self._tx() as s:
            result = await s.execute(
                delete(WebhookDelivery).where(
                    WebhookDelivery.received_at < before,
                    or_(WebhookDelivery.status != RECEIVED, WebhookDelivery.payload.is_(None)),
                )
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


def _held(delivery_id: str, attempt: int) -> ColumnElement[bool]:
    """The delivery is still ``received`` and held by the claim that made ``attempt``."""
    return and_(
        WebhookDelivery.id == delivery_id,
        WebhookDelivery.status == RECEIVED,
        WebhookDelivery.attempts == attempt,
    )
