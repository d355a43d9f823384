"""``/api/v1/queue/status``: the PoC's queue summary."""

from __future__ import annotations

from fastapi import APIRouter

from claude_cluster.coordinator.api.deps import CoordinatorDep, Reader
from claude_cluster.coordinator.store.repository import QueueStatus

router = APIRouter(prefix="/api/v1/queue", tags=["queue"])


@router.get("/status")
async def queue_status(coordinator: CoordinatorDep, _: Reader) -> QueueStatus:
    return await coordinator.repo.queue_status()
