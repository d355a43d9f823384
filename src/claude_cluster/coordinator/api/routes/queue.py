"""``/api/v1/queue/status``: the PoC's queue summary."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from claude_cluster.coordinator.api.deps import Admin, CoordinatorDep
from claude_cluster.coordinator.api.schemas import QueueStatusOut

router = APIRouter(prefix="/api/v1/queue", tags=["queue"])


@router.get("/status")
async def queue_status(coordinator: CoordinatorDep, _: Admin) -> QueueStatusOut:
    return QueueStatusOut(**asdict(await coordinator.repo.queue_status()))
