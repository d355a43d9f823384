"""The coordinator's housekeeping: what is old enough is deleted, once per
``HOUSEKEEPING_INTERVAL``.

- finished webhook deliveries older than ``WEBHOOK_RETENTION_DAYS`` (default 30): they
  exist to recognise redeliveries, which GitHub offers for 3 days (their payloads went when
  they were processed; one still waiting stays);
- the events of tasks that ended more than ``TASK_EVENT_RETENTION_DAYS`` ago (unset by
  default: kept forever); the tasks and their runs stay.

Every replica may run it: deleting what another replica already deleted is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Purged:
    deliveries: int
    task_events: int


async def purge_once(
    repo: Repository, settings: CoordinatorSettings, now: datetime | None = None
) -> Purged:
    now = now or utcnow()
    deliveries = await repo.purge_deliveries(now - timedelta(days=settings.webhook_retention_days))
    events = 0
    if settings.task_event_retention_days is not None:
        cutoff = now - timedelta(days=settings.task_event_retention_days)
        events = await repo.purge_task_events(cutoff)
    if deliveries or events:
        log.info("housekeeping_purged", deliveries=deliveries, task_events=events)
    return Purged(deliveries, events)


async def run_housekeeping(
    repo: Repository, settings: CoordinatorSettings, stop: asyncio.Event
) -> None:
    """Purge now, then every ``HOUSEKEEPING_INTERVAL`` seconds, until ``stop``."""
    while not stop.is_set():
        try:
            await purge_once(repo, settings)
        except Exception:  # the next pass tries again
            log.exception("housekeeping_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.housekeeping_interval)
