"""The reconciler keeps runs honest: leases from heartbeats, offline agents, wall-time
limits, and the gauges. It runs every ``SWEEP_INTERVAL`` seconds in every coordinator
process; the repository's row locks keep replicas from doing the same work twice.

Grace: a reconciler that starts (a coordinator restart, a replica taking over) has not seen
the heartbeats of the time it was away, and neither has one whose sweeps failed (the
database was unreachable, so no heartbeat was recorded either) or whose loop stalled for
more than half a lease (the process was stopped or starved). For one lease after its
start or its last failed sweep it declares no run lost for silence; agents heartbeat at
least twice per lease, so every live run is seen again by then. A run confirmed for
delivery keeps its task for ``DELIVERY_WINDOW_SECONDS`` plus a lease (store/leases.py).

Faster death: an agent holding runs of which nothing was heard for ``probe_after`` seconds
(half a heartbeat interval) is probed (``GET /health``, short timeout). A refused
connection means its host is up and its process gone: it goes offline and its runs are
lost at once, requeued without back-off. A timeout says nothing; the lease decides. An
agent that answered is not probed again for ``probe_after`` seconds. Probes run in a loop
of their own: an agent whose connections hang (a partition) must delay neither the sweep
nor the stall check, or it would keep the reconciler in grace and its runs for ever."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from claude_cluster import metrics
from claude_cluster.coordinator.agent_client import AgentClient
from claude_cluster.coordinator.store.repository import Repository, RunEnd, utcnow
from claude_cluster.domain.retry import RetryPolicy
from claude_cluster.logging import get_logger

#: seconds between updates of the queue-wait gauges (alerts look at minutes)
WAIT_GAUGES_SECONDS = 10.0

log = get_logger(__name__)

#: grace on top of TASK_TIMEOUT: the agent's own watchdog should end the run first
TIMEOUT_GRACE_SECONDS = 60.0


class Reconciler:
    def __init__(
        self,
        repo: Repository,
        client: AgentClient,
        *,
        policy: RetryPolicy,
        lease_seconds: float,
        heartbeat_timeout: float,
        task_timeout: float,
        sweep_interval: float,
        on_run_end: Callable[[RunEnd], Awaitable[None]],
        delivery_window: float = 0.0,
        probe_after: float | None = None,
        probe_timeout: float = 2.0,
        push_timeout: float = 10.0,
    ) -> None:
        self._repo = repo
        self._client = client
        self._policy = policy
        self._lease = lease_seconds
        self._heartbeat_timeout = heartbeat_timeout
        self._task_timeout = task_timeout
        self._sweep = sweep_interval
        self._on_run_end = on_run_end
        #: monotonic time of the last wait-gauge update (they read every queued task)
        self._waits_at = -WAIT_GAUGES_SECONDS
        #: a run confirmed for delivery is kept this long after the confirmation
        self._delivering = delivery_window + lease_seconds
        #: monotonic time before which no run is declared lost for silence (set by run())
        self.grace_until = 0.0
        self._probe_after = probe_after
        self._probe_timeout = probe_timeout
        #: a run still ``dispatching`` this long after it was made was never taken: the
        #: push ended within ``push_timeout`` (AGENT_CALL_TIMEOUT) and an agent that took
        #: it has mentioned it in a heartbeat within the lease since
        self._dispatch_seconds = lease_seconds + push_timeout
        #: agent id → monotonic time its probe was last answered
        self._answered: dict[str, float] = {}

    def start_grace(self) -> None:
        """No run is lost for silence for one lease from now (start, failed sweep)."""
        self.grace_until = max(self.grace_until, time.monotonic() + self._lease)

    @property
    def in_grace(self) -> bool:
        return time.monotonic() < self.grace_until

    async def run(self, stop: asyncio.Event) -> None:
        self.start_grace()
        log.info("reconciler_grace", seconds=self._lease)
        probing = asyncio.create_task(self._probe_loop(stop))
        try:
            await self._sweep_loop(stop)
        finally:
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)

    async def _sweep_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                await self.reconcile_once()
            except Exception:
                self.start_grace()
                log.exception("reconcile_failed")
            await self._pause(stop)
            stalled = time.monotonic() - began - self._sweep
            if stalled > self._lease / 2:
                # the process was stopped or starved (SIGSTOP, a hung database): it did
                # not record heartbeats either, so it owes every run a lease of grace
                self.start_grace()
                log.warning("reconciler_stalled", seconds=round(stalled, 1))

    async def _probe_loop(self, stop: asyncio.Event) -> None:
        if self._probe_after is None:
            return
        while not stop.is_set():
            try:
                # a refusal is proof, not silence: probes run in the grace too
                await self._probe_late_agents(self._probe_after)
            except Exception:
                log.exception("probe_failed")
            await self._pause(stop)

    async def _pause(self, stop: asyncio.Event) -> None:
        """Wait one ``SWEEP_INTERVAL``, or less when ``stop`` is set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=self._sweep)

    async def reconcile_once(self) -> None:
        if not self.in_grace:
            await self._expire()
        for end, agent in await self._repo.timed_out_runs(
            task_timeout=self._task_timeout,
            grace=TIMEOUT_GRACE_SECONDS,
            policy=self._policy,
            delivery_window=self._delivering,
        ):
            log.warning("run_timed_out", task_id=end.task.id, run_id=end.run.id, agent_id=agent.id)
            await self._client.cancel(agent, end.task.id)
            await self._on_run_end(end)
        await self.update_gauges()

    async def _expire(self) -> None:
        """Runs not seen for a lease, and agents silent for the heartbeat timeout."""
        for end in await self._repo.expire_runs(
            lease_seconds=self._lease,
            dispatch_seconds=self._dispatch_seconds,
            policy=self._policy,
            delivery_window=self._delivering,
        ):
            log.warning(
                "run_lost", task_id=end.task.id, run_id=end.run.id, agent_id=end.run.agent_id
            )
            await self._on_run_end(end)
        for agent, ends in await self._repo.expire_agents(
            heartbeat_timeout=self._heartbeat_timeout,
            policy=self._policy,
            delivery_window=self._delivering,
        ):
            log.warning("agent_offline", agent_id=agent.id, runs_lost=len(ends))
            for end in ends:
                await self._on_run_end(end)

    async def _probe_late_agents(self, probe_after: float) -> None:
        cutoff = utcnow() - timedelta(seconds=probe_after)
        now = time.monotonic()
        late = [
            agent
            for agent in await self._repo.late_agents(cutoff=cutoff)
            if now - self._answered.get(agent.id, -math.inf) >= probe_after
        ]
        if not late:
            return
        outcomes = await asyncio.gather(
            *(self._client.probe(agent, timeout=self._probe_timeout) for agent in late)
        )
        for agent, outcome in zip(late, outcomes, strict=True):
            if outcome == "alive":
                self._answered[agent.id] = time.monotonic()
                continue
            if outcome != "refused":
                log.info("agent_probe_unanswered", agent_id=agent.id, url=agent.url)
                continue
            found, ends = await self._repo.lose_dead_agent(
                agent.id,
                silent_since=cutoff,
                reason=f"agent {agent.id} is gone: {agent.url} refused the connection",
                policy=self._policy,
                # its process is gone, so is any delivery it was making (no PR can follow)
                delivery_window=0.0,
            )
            if found is None:
                continue
            metrics.AGENTS_PROBED_DEAD.inc()
            log.warning("agent_gone", agent_id=agent.id, url=agent.url, runs_lost=len(ends))
            for end in ends:
                await self._on_run_end(end)

    async def update_gauges(self) -> None:
        status = await self._repo.queue_status()
        metrics.TASKS_QUEUE_SIZE.set(status.pending_tasks)
        metrics.TASKS_ACTIVE.set(status.active_tasks)
        if time.monotonic() - self._waits_at >= WAIT_GAUGES_SECONDS:
            # 150 ms with 5,000 queued tasks on SQLite: not on every sweep
            self._waits_at = time.monotonic()
            waits = await self._repo.queue_waits()
            metrics.TASKS_OLDEST_QUEUED.set(waits.oldest_seconds)
            metrics.TASKS_WAITING_FOR_AGENT.set(waits.unmatched)
            # Here, not in the delivery worker: a worker that stopped taking deliveries (or
            # a GitHub loop that no longer runs) must not freeze the gauge that shows it.
            waiting, oldest = await self._repo.waiting_deliveries()
            metrics.GITHUB_DELIVERIES_WAITING.set(waiting)
            age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
            metrics.GITHUB_DELIVERY_OLDEST_WAITING.set(max(0.0, age))
        agents = await self._repo.list_agents()
        metrics.AGENTS_TOTAL.set(len(agents))
        metrics.AGENTS_AVAILABLE.set(status.available_nodes)
        for agent in agents:
            specialty = ",".join(agent.specialties) or "general"
            load = (
                agent.active_task_count / agent.max_concurrent_tasks
                if agent.max_concurrent_tasks
                else 0
            )
            metrics.AGENT_LOAD.labels(agent.id, specialty).set(min(1.0, load))
            metrics.AGENT_NOT_READY.labels(agent.id).set(0 if agent.not_ready_reason is None else 1)
            if agent.last_heartbeat is not None:
                metrics.AGENT_LAST_HEARTBEAT.labels(agent.id).set(agent.last_heartbeat.timestamp())
