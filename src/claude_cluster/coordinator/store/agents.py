"""Agents: registration (which loses the runs a restarted agent held), heartbeats,
draining, lookups and an agent's runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update

from claude_cluster.coordinator.store.common import (
    ACTIVE_RUNS,
    get_or_raise,
    retry_conflicts,
    utcnow,
)
from claude_cluster.coordinator.store.run_end import RunEnd, RunEndSteps
from claude_cluster.coordinator.store.tables import Agent, TaskRun
from claude_cluster.domain.contract import known_runners
from claude_cluster.domain.retry import RetryPolicy
from claude_cluster.domain.states import (
    AGENT_FAULT_LIMIT,
    ONLINE_AGENT_STATUSES,
    AgentStatus,
    ErrorCategory,
    status_for_load,
)
from claude_cluster.domain.wire import AgentRegistration, Heartbeat, HeartbeatReply
from claude_cluster.errors import Conflict, Forbidden

#: the ``token_hash`` of a reset agent: no token matches it, the registration token may
#: enrol the id again
RESET_TOKEN_HASH = ""


class AgentQueries(RunEndSteps):
    @retry_conflicts
    async def register_agent(
        self,
        reg: AgentRegistration,
        *,
        token_hash: str,
        max_agents: int,
        policy: RetryPolicy,
        replace: bool,
    ) -> tuple[Agent, bool, list[RunEnd]]:
        """Enrol or re-register an agent. A (re)registering agent has just started, so runs
        the coordinator still thinks it holds are lost: their endings are returned, the
        tasks already requeued (or failed).

        Raises:
            Forbidden: the id is enrolled (and not reset) and ``replace`` is false.
        """
        async with self._tx() as s:
            now = utcnow()
            agent = await s.get(Agent, reg.id, with_for_update=self._postgres)
            if agent is not None and agent.token_hash != RESET_TOKEN_HASH and not replace:
                raise Forbidden(
                    f"agent {reg.id} is already registered: the registration token enrols "
                    "new agents only. Register again with the agent's own token (kept in "
                    f"its state directory), or run `claude-cluster agents reset {reg.id}` "
                    "to let it enrol again"
                )
            created = agent is None
            if agent is None:
                count = await s.scalar(select(func.count()).select_from(Agent))
                if (count or 0) >= max_agents:
                    raise Conflict(f"MAX_AGENTS ({max_agents}) agents are registered already")
                agent = Agent(
                    id=reg.id,
                    registered_at=now,
                    active_task_count=0,
                    total_tasks_completed=0,
                    total_tasks_failed=0,
                    average_task_duration=0.0,
                    uptime_percentage=100.0,
                    dispatch_failures=0,
                    draining=False,
                )
                s.add(agent)
            agent.name = reg.name
            agent.hostname = reg.hostname
            agent.ip_address = reg.ip_address
            agent.port = reg.port
            agent.url = (reg.url or f"http://{reg.ip_address}:{reg.port}").rstrip("/")
            agent.specialties = reg.specialties
            agent.capabilities = reg.capabilities
            agent.max_concurrent_tasks = reg.max_concurrent_tasks
            agent.cpu_cores = reg.cpu_cores
            agent.memory_gb = reg.memory_gb
            agent.disk_gb = reg.disk_gb
            agent.workspace_path = reg.workspace_path
            agent.configuration = reg.configuration
            agent.version = reg.version
            agent.meta = reg.metadata
            agent.token_hash = token_hash
            agent.call_secret = reg.secret
            # an agent whose start checks failed is registered but never dispatched to; a
            # (re)start ran those checks afresh, so it also ends a block for faulty runs
            agent.status = (AgentStatus.IDLE if reg.ready else AgentStatus.MAINTENANCE).value
            agent.not_ready_reason = None if reg.ready else not_ready_text(reg.not_ready_reason)
            agent.fault_streak = 0
            agent.runners = known_runners(reg.runners)
            agent.current_load = 0.0
            agent.last_heartbeat = now
            agent.cooldown_until = None
            agent.dispatch_failures = 0
            await s.flush()
            lost = []
            if not created:
                runs = (
                    await s.scalars(
                        select(TaskRun).where(
                            TaskRun.agent_id == agent.id, TaskRun.status.in_(ACTIVE_RUNS)
                        )
                    )
                ).all()
                for run in runs:
                    lost.append(
                        await self._lose_run(
                            s, run, now, "agent restarted", policy, ErrorCategory.LOST
                        )
                    )
                agent.active_task_count = 0
            return agent, created, lost

    @retry_conflicts
    async def reset_agent_token(self, agent_id: str) -> Agent:
        """Revoke the agent's token; the registration token may enrol the id again."""
        async with self._tx() as s:
            agent = await get_or_raise(s, Agent, agent_id, "agent", with_for_update=self._postgres)
            agent.token_hash = RESET_TOKEN_HASH
            agent.status = AgentStatus.OFFLINE.value
            return agent

    async def get_agent(self, agent_id: str) -> Agent:
        async with self._sessions() as s:
            return await get_or_raise(s, Agent, agent_id, "agent")

    async def list_agents(self) -> Sequence[Agent]:
        async with self._sessions() as s:
            return (await s.scalars(select(Agent).order_by(Agent.id))).all()

    @retry_conflicts
    async def heartbeat(self, agent_id: str, hb: Heartbeat) -> tuple[HeartbeatReply, bool]:
        """Record a heartbeat; returns the reply and whether the agent has a free slot."""
        async with self._tx() as s:
            now = utcnow()
            # Lock order everywhere is run → task → agent, so touch the runs first.
            held = set(hb.run_ids)
            ours = set(
                (
                    await s.scalars(
                        select(TaskRun.id).where(
                            TaskRun.agent_id == agent_id, TaskRun.status.in_(ACTIVE_RUNS)
                        )
                    )
                ).all()
            )
            if held & ours:
                # Lock in id order and skip a run another transaction holds (a report or a
                # confirmation of the same run stamps it anyway): an UPDATE of several rows
                # locks them in scan order, and two of them (an agent's retried heartbeats
                # served at once) deadlock.
                touch = select(TaskRun.id).where(
                    TaskRun.id.in_(sorted(held & ours)),
                    TaskRun.agent_id == agent_id,
                    TaskRun.status.in_(ACTIVE_RUNS),
                )
                if self._postgres:
                    touch = touch.order_by(TaskRun.id).with_for_update(
                        skip_locked=True, key_share=True
                    )
                if touched := (await s.scalars(touch)).all():
                    await s.execute(
                        update(TaskRun)
                        .where(TaskRun.id.in_(touched))
                        .values(last_seen_at=now)
                        .execution_options(synchronize_session=False)
                    )
            agent = await get_or_raise(s, Agent, agent_id, "agent", with_for_update=self._postgres)
            agent.last_heartbeat = now
            agent.current_load = hb.current_load
            if hb.last_task_completed_at is not None:
                agent.last_task_completed_at = hb.last_task_completed_at
            if agent.status in (AgentStatus.OFFLINE.value, AgentStatus.ERROR.value) or (
                hb.status is not None and hb.status in ONLINE_AGENT_STATUSES
            ):
                agent.status = status_for_load(
                    agent.active_task_count, agent.max_concurrent_tasks
                ).value
            if hb.status == AgentStatus.MAINTENANCE:
                agent.status = AgentStatus.MAINTENANCE.value
            _note_readiness(agent, hb)
            if hb.runners is not None:
                agent.runners = known_runners(hb.runners)
            # Runs the agent holds that are not (or no longer) its own: it must stop them.
            reply = HeartbeatReply(stop_run_ids=sorted(held - ours), draining=agent.draining)
            return reply, agent.active_task_count < agent.max_concurrent_tasks

    @retry_conflicts
    async def mark_agent_ready(self, agent_id: str) -> Agent:
        """An operator clears the agent's not-ready reason and its fault streak (its own
        checks set the reason again at its next heartbeat when they still fail)."""
        async with self._tx() as s:
            agent = await get_or_raise(s, Agent, agent_id, "agent", with_for_update=self._postgres)
            agent.not_ready_reason = None
            agent.fault_streak = 0
            return agent

    @retry_conflicts
    async def set_draining(self, agent_id: str, draining: bool) -> Agent:
        async with self._tx() as s:
            agent = await get_or_raise(s, Agent, agent_id, "agent", with_for_update=self._postgres)
            agent.draining = draining
            return agent

    async def agent_runs(self, agent_id: str, *, active_only: bool = False) -> Sequence[TaskRun]:
        async with self._sessions() as s:
            await get_or_raise(s, Agent, agent_id, "agent")
            query = (
                select(TaskRun)
                .where(TaskRun.agent_id == agent_id)
                .order_by(TaskRun.id.desc())
                .limit(200)
            )
            if active_only:
                query = query.where(TaskRun.status.in_(ACTIVE_RUNS))
            return (await s.scalars(query)).all()


def not_ready_text(reason: str | None) -> str:
    return (reason or "").strip()[:2000] or "the agent reported itself not ready"


def _note_readiness(agent: Agent, hb: Heartbeat) -> None:
    """What the agent's own readiness checks said. A failing check sets its reason (and
    the agent's own checks govern from then on: the fault streak restarts); a passing one
    clears a reason the agent reported, but not a block for faulty runs
    (``fault_streak`` at :data:`AGENT_FAULT_LIMIT`): that waits for an operator, a run
    that succeeds, a restart, or the agent's checks failing and then passing."""
    if hb.ready is None:  # an agent that does not report its checks
        return
    if not hb.ready:
        agent.not_ready_reason = not_ready_text(hb.not_ready_reason)
        agent.fault_streak = 0
    elif agent.not_ready_reason is not None and agent.fault_streak < AGENT_FAULT_LIMIT:
        agent.not_ready_reason = None
