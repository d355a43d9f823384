"""Leases and timeouts: runs no heartbeat mentioned, agents gone silent, and runs past the
wall time. Each sweep locks its rows with ``SKIP LOCKED`` so replicas share the work.

A run whose delivery was confirmed (``delivery_confirmed_at``) is delivering: none of these
sweeps ends it before ``delivery_window`` seconds (the reconciler passes
``DELIVERY_WINDOW_SECONDS`` plus a lease) have passed since the confirmation, so that a
requeue can never overlap the push of the run that still holds the task.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select

from claude_cluster.coordinator.store.common import ACTIVE_RUNS, retry_conflicts, utcnow
from claude_cluster.coordinator.store.run_end import RunEnd, RunEndSteps
from claude_cluster.coordinator.store.tables import Agent, TaskRun
from claude_cluster.domain.retry import RetryPolicy
from claude_cluster.domain.states import AgentStatus, ErrorCategory, RunStatus


class LeaseQueries(RunEndSteps):
    @retry_conflicts
    async def expire_runs(
        self,
        *,
        lease_seconds: float,
        dispatch_seconds: float,
        policy: RetryPolicy,
        delivery_window: float = 0.0,
    ) -> list[RunEnd]:
        """Runs no heartbeat or report mentioned for a lease are lost; their tasks retry.
        A run confirmed for delivery keeps its task for ``delivery_window`` seconds after
        the confirmation (the caller passes the agent's window plus a lease)."""
        async with self._tx() as s:
            now = utcnow()
            query = select(TaskRun).where(
                or_(
                    and_(
                        TaskRun.status == RunStatus.RUNNING.value,
                        TaskRun.last_seen_at < now - timedelta(seconds=lease_seconds),
                        not_delivering(now, delivery_window),
                    ),
                    and_(
                        TaskRun.status == RunStatus.DISPATCHING.value,
                        TaskRun.last_seen_at < now - timedelta(seconds=dispatch_seconds),
                    ),
                )
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            ends = []
            for run in (await s.scalars(query)).all():
                ends.append(
                    await self._lose_run(
                        s,
                        run,
                        now,
                        "no heartbeat mentioned the run for a lease",
                        policy,
                        ErrorCategory.LOST,
                    )
                )
            return ends

    @retry_conflicts
    async def expire_agents(
        self, *, heartbeat_timeout: float, policy: RetryPolicy, delivery_window: float = 0.0
    ) -> list[tuple[Agent, list[RunEnd]]]:
        """Agents silent for ``heartbeat_timeout`` go offline and lose their runs (but a
        run confirmed for delivery less than ``delivery_window`` ago: the lease sweep
        ends it later if it never reports)."""
        async with self._tx() as s:
            now = utcnow()
            query = select(Agent).where(
                Agent.status != AgentStatus.OFFLINE.value,
                Agent.last_heartbeat < now - timedelta(seconds=heartbeat_timeout),
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            out = []
            for agent in (await s.scalars(query)).all():
                agent.status = AgentStatus.OFFLINE.value
                runs = (
                    await s.scalars(
                        select(TaskRun).where(
                            TaskRun.agent_id == agent.id,
                            TaskRun.status.in_(ACTIVE_RUNS),
                            not_delivering(now, delivery_window),
                        )
                    )
                ).all()
                ends = [
                    await self._lose_run(
                        s, r, now, f"agent {agent.id} went offline", policy, ErrorCategory.LOST
                    )
                    for r in runs
                ]
                kept = await s.scalar(
                    select(func.count())
                    .select_from(TaskRun)
                    .where(TaskRun.agent_id == agent.id, TaskRun.status.in_(ACTIVE_RUNS))
                )
                agent.active_task_count = kept or 0
                out.append((agent, ends))
            return out

    async def late_agents(self, *, cutoff: datetime) -> list[Agent]:
        """Agents holding active runs of which nothing was heard (heartbeat, run report)
        since ``cutoff``: the ones worth a probe."""
        async with self._sessions() as s:
            latest = (
                select(TaskRun.agent_id, func.max(TaskRun.last_seen_at).label("seen"))
                .where(TaskRun.status.in_(ACTIVE_RUNS))
                .group_by(TaskRun.agent_id)
                .subquery()
            )
            query = (
                select(Agent)
                .join(latest, latest.c.agent_id == Agent.id)
                .where(
                    Agent.status != AgentStatus.OFFLINE.value,
                    Agent.last_heartbeat < cutoff,
                    latest.c.seen < cutoff,
                )
                .order_by(Agent.id)
            )
            return list((await s.scalars(query)).all())

    @retry_conflicts
    async def lose_dead_agent(
        self,
        agent_id: str,
        *,
        silent_since: datetime,
        reason: str,
        policy: RetryPolicy,
        delivery_window: float = 0.0,
    ) -> tuple[Agent | None, list[RunEnd]]:
        """The agent's process is gone (its host refused the probe's connection): it goes
        offline and its active runs are lost now, their tasks requeued with no back-off
        (a retry is still counted). Nothing happens if the agent was heard from since
        ``silent_since`` (it came back, or re-registered), and a run confirmed for delivery
        less than ``delivery_window`` ago is left to the lease sweep."""
        async with self._tx() as s:
            now = utcnow()
            heard = await s.scalar(select(Agent.last_heartbeat).where(Agent.id == agent_id))
            if heard is None or heard >= silent_since:
                return None, []
            query = select(TaskRun).where(
                TaskRun.agent_id == agent_id,
                TaskRun.status.in_(ACTIVE_RUNS),
                TaskRun.last_seen_at < silent_since,
                not_delivering(now, delivery_window),
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            at_once = RetryPolicy(max_retries=policy.max_retries, base_seconds=0, cap_seconds=0)
            ends = [
                await self._lose_run(s, run, now, reason, at_once, ErrorCategory.LOST)
                for run in (await s.scalars(query)).all()
            ]
            agent = await s.get(Agent, agent_id, with_for_update=self._postgres)
            assert agent is not None
            if agent.last_heartbeat is not None and agent.last_heartbeat < silent_since:
                agent.status = AgentStatus.OFFLINE.value
            return agent, ends

    @retry_conflicts
    async def timed_out_runs(
        self,
        *,
        task_timeout: float,
        grace: float,
        policy: RetryPolicy,
        delivery_window: float = 0.0,
    ) -> list[tuple[RunEnd, Agent]]:
        """Runs past the wall time (plus a grace for the agent's own watchdog) are ended
        as timeouts; the caller tells the agent to stop them. A run confirmed for delivery
        less than ``delivery_window`` ago is left to finish its push."""
        async with self._tx() as s:
            now = utcnow()
            query = select(TaskRun).where(
                TaskRun.status == RunStatus.RUNNING.value,
                TaskRun.started_at < now - timedelta(seconds=task_timeout + grace),
                not_delivering(now, delivery_window),
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            out = []
            for run in (await s.scalars(query)).all():
                end = await self._lose_run(
                    s,
                    run,
                    now,
                    f"run exceeded TASK_TIMEOUT ({task_timeout:.0f} s)",
                    policy,
                    ErrorCategory.TIMEOUT,
                    status=RunStatus.FAILED,
                )
                agent = await s.get(Agent, run.agent_id)
                assert agent is not None
                out.append((end, agent))
            return out


def not_delivering(now: datetime, seconds: float) -> ColumnElement[bool]:
    """The run's delivery was not confirmed in the last ``seconds``."""
    return or_(
        TaskRun.delivery_confirmed_at.is_(None),
        TaskRun.delivery_confirmed_at < now - timedelta(seconds=seconds),
    )
