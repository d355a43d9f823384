"""The housekeeping loop: keeps ``WORKSPACE_PATH`` within its retention and size cap.

Every ``interval`` it runs the workspace sweeper (idle worktrees older than the
retention, then the oldest while over the cap, then unused mirrors), deletes the per-task
CLI homes of tasks not seen for the retention, and updates the disk-usage gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from claude_cluster import metrics
from claude_cluster.agent.sweep import force_rmtree
from claude_cluster.agent.workspace import WorkspaceManager
from claude_cluster.logging import get_logger

__all__ = ["HousekeepingConfig", "HousekeepingLoop"]

log = get_logger(__name__)


@dataclass(frozen=True)
class HousekeepingConfig:
    """Attributes:
    retention_days: ``WORKSPACE_CLEANUP_DAYS``.
    max_size_gb: ``WORKSPACE_MAX_SIZE_GB``.
    interval: seconds between sweeps.
    first_delay: seconds after start before the first sweep.
    """

    retention_days: float = 7.0
    max_size_gb: float = 100.0
    interval: float = 3600.0
    first_delay: float = 30.0


class HousekeepingLoop:
    """Sweeps the workspace directory periodically.

    Args:
        workspaces: the manager whose directory is swept.
        homes_dir: parent of the per-task CLI homes (``task-<id>``).
        busy_tasks: the task ids with a run held now (their homes stay).
        config: limits and timing.
    """

    def __init__(
        self,
        workspaces: WorkspaceManager,
        homes_dir: Path,
        busy_tasks: Callable[[], Collection[int]],
        config: HousekeepingConfig,
    ) -> None:
        self.workspaces = workspaces
        self.homes_dir = homes_dir
        self.busy_tasks = busy_tasks
        self.config = config

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.config.first_delay
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            await self.sweep_once()
            delay = self.config.interval

    async def sweep_once(self) -> None:
        try:
            report = await self.workspaces.sweep(
                retention_days=self.config.retention_days, max_size_gb=self.config.max_size_gb
            )
            homes = await asyncio.to_thread(self._sweep_homes)
        except Exception as exc:  # a failing sweep must not stop the agent
            log.warning("workspace_sweep_failed", error=str(exc))
            return
        metrics.WORKSPACE_DISK_USAGE.set(report.total_bytes)
        if report.removed or homes:
            log.info(
                "workspace_swept",
                removed=len(report.removed),
                homes_removed=homes,
                freed_bytes=report.freed_bytes,
                total_bytes=report.total_bytes,
                busy=report.busy,
            )

    def _sweep_homes(self) -> int:
        cutoff = time.time() - self.config.retention_days * 86_400
        busy = {f"task-{task_id}" for task_id in self.busy_tasks()}
        removed = 0
        for home in self.homes_dir.glob("task-*"):
            try:
                stale = home.name not in busy and home.stat().st_mtime < cutoff
            except OSError:
                continue
            if stale:
                force_rmtree(home)
                removed += 1
        return removed
