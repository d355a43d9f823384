"""The heartbeat loop: every interval, tell the coordinator which runs this agent holds.

The answer names runs the coordinator no longer assigns to us (cancelled, or presumed lost
and given to another agent): those are stopped at once. While no heartbeat gets through the
runs go on: a coordinator restart or an outage must not throw paid work away. What must
never happen twice is a delivery, and that is fenced where it happens: a run pushes only
after the coordinator confirmed that it still holds its task (``JobRunner._confirm``). A
coordinator that forgot us (404, or our token is no longer valid) gets a new registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from claude_cluster.agent.coordinator_client import (
    CoordinatorClient,
    CoordinatorError,
    NotRegistered,
)
from claude_cluster.agent.pool import JobPool, StopCause
from claude_cluster.domain.states import AgentStatus, status_for_load
from claude_cluster.domain.wire import Heartbeat
from claude_cluster.logging import get_logger

__all__ = ["HeartbeatConfig", "HeartbeatLoop"]

log = get_logger(__name__)


@dataclass(frozen=True)
class HeartbeatConfig:
    """Attributes:
    interval: seconds between heartbeats (``HEARTBEAT_INTERVAL``).
    lease_seconds: the coordinator's run lease; without a heartbeat for this long the
        agent says that its runs may have been handed to others (they go on; their
        delivery waits for the coordinator's confirmation).
    """

    interval: float = 10.0
    lease_seconds: float = 30.0


class HeartbeatLoop:
    """Sends heartbeats for ``agent_id`` until stopped.

    Args:
        client: the coordinator client.
        pool: the runs to report (and to stop).
        config: timing.
        agent_id: who we are.
        reregister: registers again (one attempt; raises :class:`CoordinatorError`).
        runners: the runners the agent can run now (a credential or an executable may
            come or go), told with each heartbeat; None: not told.
    """

    def __init__(
        self,
        client: CoordinatorClient,
        pool: JobPool,
        config: HeartbeatConfig,
        *,
        agent_id: str,
        reregister: Callable[[], Awaitable[None]],
        runners: Callable[[], list[str]] | None = None,
    ) -> None:
        self.client = client
        self.pool = pool
        self.config = config
        self.agent_id = agent_id
        self.reregister = reregister
        self.runners = runners
        self.started = time.monotonic()
        #: monotonic time of the last heartbeat the coordinator answered
        self.last_success = time.monotonic()
        self.coordinator_draining = False
        self.maintenance = False

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every ``interval`` until ``stop`` is set."""
        while not stop.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval)

    async def beat(self) -> bool:
        """One heartbeat; returns whether the coordinator answered it."""
        try:
            try:
                reply = await self.client.heartbeat(
                    self.agent_id, self._heartbeat(), timeout=max(1.0, self.config.interval)
                )
            except NotRegistered as exc:
                log.warning("agent_unknown_to_coordinator", agent_id=self.agent_id, error=str(exc))
                await self.reregister()
                reply = await self.client.heartbeat(self.agent_id, self._heartbeat())
        except CoordinatorError as exc:
            self._say_unreachable(str(exc))
            return False
        self.last_success = time.monotonic()
        for run_id in reply.stop_run_ids:
            if self.pool.stop_run(run_id, StopCause.NOT_ASSIGNED):
                log.warning("run_not_assigned", agent_id=self.agent_id, run_id=run_id)
        if reply.draining != self.coordinator_draining:
            self.coordinator_draining = reply.draining
            log.info("coordinator_drain", agent_id=self.agent_id, draining=reply.draining)
        return True

    def _heartbeat(self) -> Heartbeat:
        pool = self.pool
        status = (
            AgentStatus.MAINTENANCE
            if pool.draining or self.maintenance or pool.not_ready is not None
            else status_for_load(pool.working, pool.capacity)
        )
        return Heartbeat(
            status=status,
            current_load=pool.load,
            active_task_count=pool.working,
            uptime=round(time.monotonic() - self.started, 3),
            last_task_completed_at=pool.last_completed_at,
            run_ids=pool.held_run_ids(),
            ready=pool.not_ready is None,
            not_ready_reason=pool.not_ready,
            runners=self.runners() if self.runners is not None else None,
        )

    def _say_unreachable(self, error: str) -> None:
        silent = time.monotonic() - self.last_success
        if silent < self.config.lease_seconds:
            log.info(
                f"heartbeat failed; will try again in {self.config.interval:g} s",
                agent_id=self.agent_id,
                error=error,
                last_success_ago=round(silent, 1),
            )
            return
        log.warning(
            "heartbeat failed for a lease; runs go on, their delivery waits for the "
            "coordinator's confirmation",
            agent_id=self.agent_id,
            error=error,
            last_success_ago=round(silent, 1),
            runs_held=len(self.pool.held_run_ids()),
        )
