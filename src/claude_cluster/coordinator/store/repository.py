"""Every query of the coordinator. Each public method is one transaction, so a request that
fails halfway changes nothing.

The scheduler and reconciler decide *when*; this module decides nothing about policy beyond
what a transaction must guarantee: a task is claimed once (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite, and a partial unique index on active runs behind
both), an agent slot is taken by a conditional update, and a run is finished once.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from claude_cluster.coordinator.store.tables import (
    Agent,
    ApiToken,
    Task,
    TaskEvent,
    TaskRun,
    WebhookDelivery,
)
from claude_cluster.domain import retry, scoring
from claude_cluster.domain.states import (
    ACTIVE_RUN_STATUSES,
    ONLINE_AGENT_STATUSES,
    RUNNING_TASK_STATUSES,
    TERMINAL_TASK_STATUSES,
    AgentStatus,
    ErrorCategory,
    Priority,
    RunStatus,
    TaskStatus,
    check_transition,
    status_for_load,
)
from claude_cluster.domain.wire import (
    AgentRegistration,
    Heartbeat,
    HeartbeatReply,
    RunEvent,
    RunResult,
)
from claude_cluster.errors import Conflict, Forbidden, NotFound

_ACTIVE = [s.value for s in ACTIVE_RUN_STATUSES]
_ONLINE = [s.value for s in ONLINE_AGENT_STATUSES]
_TERMINAL = [s.value for s in TERMINAL_TASK_STATUSES]


P = ParamSpec("P")
T = TypeVar("T")

#: deadlock_detected, serialization_failure
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def _is_conflict(exc: DBAPIError) -> bool:
    state = getattr(exc.orig, "sqlstate", None)
    return state in _RETRYABLE_SQLSTATES or "database is locked" in str(exc.orig)


def retry_conflicts(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run the transaction again when the database aborted it for a deadlock or a
    serialization conflict (it changed nothing, so running it again is safe)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(5):
            try:
                return await fn(*args, **kwargs)
            except DBAPIError as exc:
                if attempt == 4 or not _is_conflict(exc):
                    raise
                await asyncio.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311
        raise AssertionError("unreachable")

    return wrapper


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewTask:
    title: str
    description: str
    github_repository: str
    github_issue_number: int
    repository_url: str
    priority: Priority
    requirements: list[str]
    labels: list[str]
    complexity: str
    estimated_duration_minutes: int
    budget_usd: float | None = None
    test_command: str | None = None
    created_by: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_seconds: float = 10.0
    cap_seconds: float = 300.0


@dataclass(frozen=True)
class Claim:
    """A task claimed for an agent: push ``run`` to ``agent`` next."""

    task: Task
    run: TaskRun
    agent: Agent


@dataclass(frozen=True)
class RunEnd:
    """How finishing a run left its task (for metrics, comments and wake-ups)."""

    task: Task
    run: TaskRun
    already_finished: bool = False
    retried: bool = False
    delay_seconds: float = 0.0


@dataclass
class QueueStatus:
    pending_tasks: int
    active_tasks: int
    completed_tasks: int
    failed_tasks: int
    available_nodes: int
    total_capacity: int
    current_load: float
    by_status: dict[str, int] = field(default_factory=dict)


class Repository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, postgres: bool) -> None:
        self._sessions = sessions
        self._postgres = postgres

    # --- tasks ----------------------------------------------------------------------

    async def create_task(self, new: NewTask) -> tuple[Task, bool]:
        """Insert a queued task, or return the open task of the same issue (``created`` False).

        Two racing creators both pass the lookup; the partial unique index stops the second,
        which then returns the winner's row."""
        for _ in range(3):
            existing = await self._open_task_for_issue(
                new.github_repository, new.github_issue_number
            )
            if existing is not None:
                return existing, False
            try:
                async with self._sessions.begin() as s:
                    now = utcnow()
                    task = Task(
                        title=new.title,
                        description=new.description,
                        status=TaskStatus.QUEUED.value,
                        priority=new.priority.value,
                        priority_rank=new.priority.rank,
                        github_repository=new.github_repository,
                        github_issue_number=new.github_issue_number,
                        repository_url=new.repository_url,
                        labels=new.labels,
                        requirements=new.requirements,
                        estimated_complexity=new.complexity,
                        estimated_duration_minutes=new.estimated_duration_minutes,
                        budget_usd=new.budget_usd,
                        test_command=new.test_command,
                        created_by=new.created_by,
                        result_data={},
                        created_at=now,
                        updated_at=now,
                        queued_at=now,
                    )
                    s.add(task)
                    await s.flush()
                    self._event(
                        s,
                        task.id,
                        "created",
                        f"queued with priority {new.priority.value}",
                        {"requirements": new.requirements, "created_by": new.created_by},
                    )
                return task, True
            except IntegrityError:
                continue
        raise Conflict("could not create the task: the issue keeps changing; try again")

    async def _open_task_for_issue(self, repository: str, issue: int) -> Task | None:
        async with self._sessions() as s:
            return (
                await s.scalars(
                    select(Task).where(
                        Task.github_repository == repository,
                        Task.github_issue_number == issue,
                        Task.status.not_in(_TERMINAL),
                    )
                )
            ).first()

    async def open_task_for_issue(self, repository: str, issue: int) -> Task | None:
        return await self._open_task_for_issue(repository, issue)

    async def get_task(self, task_id: int) -> Task:
        async with self._sessions() as s:
            task = await s.get(Task, task_id)
            if task is None:
                raise NotFound(kind="task", id=task_id)
            return task

    async def list_tasks(
        self,
        *,
        status: str | None = None,
        repository: str | None = None,
        agent_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Sequence[Task]:
        query = select(Task).order_by(Task.id.desc()).limit(limit).offset(offset)
        if status:
            query = query.where(Task.status == status)
        if repository:
            query = query.where(Task.github_repository == repository)
        if agent_id:
            query = query.where(Task.assigned_agent_id == agent_id)
        async with self._sessions() as s:
            return (await s.scalars(query)).all()

    @retry_conflicts
    async def update_task(self, task_id: int, changes: dict[str, Any]) -> Task:
        """Change a non-terminal task's title, description, priority, requirements, budget."""
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
                raise Conflict(f"task {task_id} is {task.status}; it can no longer be changed")
            for key, value in changes.items():
                if key == "priority":
                    task.priority = Priority(value).value
                    task.priority_rank = Priority(value).rank
                else:
                    setattr(task, key, value)
            task.updated_at = utcnow()
            self._event(s, task.id, "updated", "task updated", {"fields": sorted(changes)})
            return task

    @retry_conflicts
    async def cancel_task(
        self, task_id: int, reason: str
    ) -> tuple[Task, tuple[TaskRun, Agent] | None]:
        """Cancel a task; returns the run to stop on its agent, if one was active."""
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            check_transition(TaskStatus(task.status), TaskStatus.CANCELLED)
            now = utcnow()
            to_stop = None
            run = await self._active_run(s, task.id)
            if run is not None:
                agent = await self._end_run(
                    s,
                    run,
                    RunStatus.CANCELLED,
                    now,
                    category=ErrorCategory.CANCELLED,
                    message=reason,
                )
                to_stop = (run, agent)
            task.status = TaskStatus.CANCELLED.value
            task.cancelled_at = now
            task.updated_at = now
            task.error_message = reason
            self._event(s, task.id, "cancelled", reason)
            return task, to_stop

    @retry_conflicts
    async def requeue_for_feedback(self, task_id: int, feedback: str) -> Task:
        """Queue a follow-up run on the task's branch with review feedback."""
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            if TaskStatus(task.status) != TaskStatus.REVIEW:
                raise Conflict(
                    f"task {task_id} is {task.status}, not review; feedback is not taken"
                )
            now = utcnow()
            task.status = TaskStatus.QUEUED.value
            task.feedback = feedback
            task.queued_at = now
            task.not_before = None
            task.updated_at = now
            self._event(s, task.id, "feedback", "follow-up queued with review feedback")
            return task

    @retry_conflicts
    async def set_task_status(
        self, task_id: int, target: TaskStatus, message: str, **fields: Any
    ) -> Task:
        """A status change that comes from outside a run (a merged or closed PR)."""
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            check_transition(TaskStatus(task.status), target)
            now = utcnow()
            task.status = target.value
            task.updated_at = now
            if target == TaskStatus.COMPLETED:
                task.completed_at = now
            elif target == TaskStatus.FAILED:
                task.failed_at = now
                task.error_message = message
            for key, value in fields.items():
                setattr(task, key, value)
            self._event(s, task.id, target.value, message)
            return task

    async def list_runs(self, task_id: int) -> Sequence[TaskRun]:
        async with self._sessions() as s:
            if await s.get(Task, task_id) is None:
                raise NotFound(kind="task", id=task_id)
            return (
                await s.scalars(
                    select(TaskRun).where(TaskRun.task_id == task_id).order_by(TaskRun.attempt)
                )
            ).all()

    async def get_run(self, run_id: int) -> TaskRun:
        async with self._sessions() as s:
            run = await s.get(TaskRun, run_id)
            if run is None:
                raise NotFound(kind="run", id=run_id)
            return run

    async def list_events(
        self, task_id: int, *, after_id: int = 0, limit: int = 500
    ) -> Sequence[TaskEvent]:
        async with self._sessions() as s:
            if await s.get(Task, task_id) is None:
                raise NotFound(kind="task", id=task_id)
            query = (
                select(TaskEvent)
                .where(TaskEvent.task_id == task_id, TaskEvent.id > after_id)
                .order_by(TaskEvent.id)
                .limit(limit)
            )
            return (await s.scalars(query)).all()

    # --- agents ---------------------------------------------------------------------

    @retry_conflicts
    async def register_agent(
        self, reg: AgentRegistration, *, token_hash: str, max_agents: int
    ) -> tuple[Agent, bool, list[TaskRun]]:
        """Upsert an agent. A (re)registering agent has just started, so runs the
        coordinator still thinks it holds are lost: they are returned, already requeued."""
        async with self._sessions.begin() as s:
            now = utcnow()
            agent = await s.get(Agent, reg.id, with_for_update=self._postgres)
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
            agent.status = AgentStatus.IDLE.value
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
                            TaskRun.agent_id == agent.id, TaskRun.status.in_(_ACTIVE)
                        )
                    )
                ).all()
                for run in runs:
                    await self._lose_run(
                        s, run, now, "agent restarted", RetryPolicy(), ErrorCategory.LOST
                    )
                    lost.append(run)
                agent.active_task_count = 0
            return agent, created, lost

    async def agent_by_token_hash(self, token_hash: str) -> Agent | None:
        async with self._sessions() as s:
            return (await s.scalars(select(Agent).where(Agent.token_hash == token_hash))).first()

    async def get_agent(self, agent_id: str) -> Agent:
        async with self._sessions() as s:
            agent = await s.get(Agent, agent_id)
            if agent is None:
                raise NotFound(kind="agent", id=agent_id)
            return agent

    async def list_agents(self) -> Sequence[Agent]:
        async with self._sessions() as s:
            return (await s.scalars(select(Agent).order_by(Agent.id))).all()

    @retry_conflicts
    async def heartbeat(self, agent_id: str, hb: Heartbeat) -> HeartbeatReply:
        async with self._sessions.begin() as s:
            now = utcnow()
            # Lock order everywhere is run → task → agent, so touch the runs first.
            held = set(hb.run_ids)
            ours = set(
                (
                    await s.scalars(
                        select(TaskRun.id).where(
                            TaskRun.agent_id == agent_id, TaskRun.status.in_(_ACTIVE)
                        )
                    )
                ).all()
            )
            if held & ours:
                await s.execute(
                    update(TaskRun)
                    .where(
                        TaskRun.id.in_(sorted(held & ours)),
                        TaskRun.agent_id == agent_id,
                        TaskRun.status.in_(_ACTIVE),
                    )
                    .values(last_seen_at=now)
                    .execution_options(synchronize_session=False)
                )
            agent = await s.get(Agent, agent_id, with_for_update=self._postgres)
            if agent is None:
                raise NotFound(kind="agent", id=agent_id)
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
            # Runs the agent holds that are not (or no longer) its own: it must stop them.
            return HeartbeatReply(stop_run_ids=sorted(held - ours), draining=agent.draining)

    @retry_conflicts
    async def set_draining(self, agent_id: str, draining: bool) -> Agent:
        async with self._sessions.begin() as s:
            agent = await s.get(Agent, agent_id, with_for_update=self._postgres)
            if agent is None:
                raise NotFound(kind="agent", id=agent_id)
            agent.draining = draining
            return agent

    async def agent_runs(self, agent_id: str, *, active_only: bool = False) -> Sequence[TaskRun]:
        async with self._sessions() as s:
            if await s.get(Agent, agent_id) is None:
                raise NotFound(kind="agent", id=agent_id)
            query = (
                select(TaskRun)
                .where(TaskRun.agent_id == agent_id)
                .order_by(TaskRun.id.desc())
                .limit(200)
            )
            if active_only:
                query = query.where(TaskRun.status.in_(_ACTIVE))
            return (await s.scalars(query)).all()

    # --- claiming -------------------------------------------------------------------

    @retry_conflicts
    async def claim(
        self,
        *,
        max_active: int,
        batch: int = 16,
        only_task: int | None = None,
        only_agent: str | None = None,
    ) -> list[Claim]:
        """Claim up to ``batch`` ready tasks for the best agents, in one transaction."""
        async with self._sessions.begin() as s:
            now = utcnow()
            active = (
                await s.scalar(
                    select(func.count()).select_from(TaskRun).where(TaskRun.status.in_(_ACTIVE))
                )
                or 0
            )
            room = min(batch, max_active - active)
            if room <= 0:
                return []
            agent_query = select(Agent).where(
                Agent.status.in_(_ONLINE),
                Agent.draining.is_(False),
                Agent.active_task_count < Agent.max_concurrent_tasks,
                or_(Agent.cooldown_until.is_(None), Agent.cooldown_until <= now),
            )
            if only_agent is not None:
                agent_query = agent_query.where(Agent.id == only_agent)
            agents = {a.id: a for a in (await s.scalars(agent_query)).all()}
            if not agents:
                return []
            task_query = (
                select(Task)
                .where(
                    Task.status == TaskStatus.QUEUED.value,
                    or_(Task.not_before.is_(None), Task.not_before <= now),
                )
                .order_by(Task.priority_rank.desc(), Task.created_at, Task.id)
                .limit(room * 4 if only_task is None else 1)
            )
            if only_task is not None:
                task_query = task_query.where(Task.id == only_task)
            if self._postgres:
                task_query = task_query.with_for_update(skip_locked=True)
            tasks = (await s.scalars(task_query)).all()
            views = {a.id: _view(a) for a in agents.values()}
            chosen: list[tuple[Task, Agent]] = []
            for task in tasks:
                if len(chosen) >= room:
                    break
                best = scoring.pick(
                    list(views.values()),
                    task.requirements,
                    task.estimated_duration_minutes,
                    require_match=only_agent is None,
                )
                if not best:
                    continue
                pick = best[0]
                chosen.append((task, agents[pick.id]))
                views[pick.id] = _view(agents[pick.id], extra=_taken(chosen, pick.id))
            if not chosen:
                return []
            # Take the slots with conditional updates: another coordinator may have taken
            # some since we read them; tasks whose agent has no room left stay queued.
            taken: dict[str, int] = {}
            for _, agent in chosen:
                taken[agent.id] = taken.get(agent.id, 0) + 1
            granted: set[str] = set()
            for agent_id, n in sorted(taken.items()):  # one lock order across replicas
                result = await s.execute(
                    update(Agent)
                    .where(
                        Agent.id == agent_id,
                        Agent.active_task_count + n <= Agent.max_concurrent_tasks,
                    )
                    .values(active_task_count=Agent.active_task_count + n)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    granted.add(agent_id)
            claims: list[Claim] = []
            for task, agent in chosen:
                if agent.id not in granted:
                    continue
                task.attempts += 1
                kind = "followup" if task.feedback else "initial"
                run = TaskRun(
                    task_id=task.id,
                    attempt=task.attempts,
                    agent_id=agent.id,
                    status=RunStatus.DISPATCHING.value,
                    kind=kind,
                    started_at=now,
                    last_seen_at=now,
                    branch=task.github_branch,
                    cost_usd=0.0,
                    input_tokens=0,
                    output_tokens=0,
                    cache_read_tokens=0,
                    cache_creation_tokens=0,
                    num_turns=0,
                    fix_rounds=0,
                    changed_files=[],
                )
                s.add(run)
                task.status = TaskStatus.ASSIGNED.value
                task.assigned_agent_id = agent.id
                task.assigned_at = now
                task.updated_at = now
                claims.append(Claim(task=task, run=run, agent=agent))
            await s.flush()
            for granted_id in granted:
                await s.refresh(agents[granted_id])
                a = agents[granted_id]
                a.status = status_for_load(a.active_task_count, a.max_concurrent_tasks).value
            for c in claims:
                self._event(
                    s,
                    c.task.id,
                    "assigned",
                    f"run {c.run.id} (attempt {c.run.attempt}) to {c.agent.id}",
                    {"run_id": c.run.id, "agent_id": c.agent.id},
                    run_id=c.run.id,
                )
            return claims

    @retry_conflicts
    async def mark_accepted(self, run_id: int) -> None:
        """The agent took the run: run ``running``, task ``in_progress``."""
        async with self._sessions.begin() as s:
            run = await s.get(TaskRun, run_id, with_for_update=self._postgres)
            if run is None or run.status != RunStatus.DISPATCHING.value:
                return
            await self._start_running(s, run, utcnow())

    async def _start_running(self, s: AsyncSession, run: TaskRun, now: datetime) -> None:
        run.status = RunStatus.RUNNING.value
        run.accepted_at = now
        run.last_seen_at = now
        task = await s.get(Task, run.task_id, with_for_update=self._postgres)
        if task is not None and task.status == TaskStatus.ASSIGNED.value:
            task.status = TaskStatus.IN_PROGRESS.value
            task.started_at = task.started_at or now
            task.updated_at = now

    @retry_conflicts
    async def dispatch_failed(
        self, run_id: int, reason: str, *, cooldown_seconds: float
    ) -> Task | None:
        """The push failed: the run is lost, the task goes back to ``queued`` at once
        (the agent's fault, not the task's: no retry is counted) and the agent cools down."""
        async with self._sessions.begin() as s:
            run = await s.get(TaskRun, run_id, with_for_update=self._postgres)
            if run is None or run.status not in _ACTIVE:
                return None
            now = utcnow()
            agent = await self._end_run(
                s, run, RunStatus.LOST, now, category=ErrorCategory.DISPATCH_FAILED, message=reason
            )
            agent.dispatch_failures += 1
            agent.cooldown_until = now + timedelta(seconds=cooldown_seconds)
            task = await s.get(Task, run.task_id, with_for_update=self._postgres)
            if task is None or task.status not in {s_.value for s_ in RUNNING_TASK_STATUSES}:
                return task
            task.status = TaskStatus.QUEUED.value
            task.queued_at = now
            task.assigned_agent_id = None
            task.updated_at = now
            self._event(
                s, task.id, "dispatch_failed", reason, {"agent_id": agent.id}, run_id=run.id
            )
            return task

    # --- run reports ------------------------------------------------------------------

    async def _run_of_agent(self, s: AsyncSession, run_id: int, agent_id: str) -> TaskRun:
        run = await s.get(TaskRun, run_id, with_for_update=self._postgres)
        if run is None:
            raise NotFound(kind="run", id=run_id)
        if run.agent_id != agent_id:
            raise Forbidden(f"run {run_id} belongs to another agent")
        return run

    async def record_events(
        self, run_id: int, agent_id: str, events: Sequence[RunEvent]
    ) -> tuple[int, list[TaskEvent]]:
        """Store a batch; events already stored (same run and seq) are skipped, so an
        agent may resend a batch whose answer it never saw."""
        for _ in range(3):
            try:
                async with self._sessions.begin() as s:
                    run = await self._run_of_agent(s, run_id, agent_id)
                    seqs = [e.seq for e in events]
                    seen = set(
                        (
                            await s.scalars(
                                select(TaskEvent.seq).where(
                                    TaskEvent.run_id == run_id, TaskEvent.seq.in_(seqs)
                                )
                            )
                        ).all()
                    )
                    stored = []
                    for e in events:
                        if e.seq in seen:
                            continue
                        seen.add(e.seq)
                        row = TaskEvent(
                            task_id=run.task_id,
                            run_id=run_id,
                            seq=e.seq,
                            timestamp=e.ts,
                            kind=e.kind,
                            level=e.level,
                            message=e.message[:20_000],
                            details=e.data,
                        )
                        s.add(row)
                        stored.append(row)
                    if run.status in _ACTIVE:
                        run.last_seen_at = utcnow()
                    await s.flush()
                    return len(stored), stored
            except IntegrityError:
                continue
        raise Conflict(f"events of run {run_id} are being written concurrently; resend")

    @retry_conflicts
    async def set_phase(self, run_id: int, agent_id: str, phase: str) -> Task:
        async with self._sessions.begin() as s:
            run = await self._run_of_agent(s, run_id, agent_id)
            if run.status not in _ACTIVE:
                raise Conflict(f"run {run_id} is {run.status}")
            now = utcnow()
            if run.status == RunStatus.DISPATCHING.value:
                await self._start_running(s, run, now)
            run.last_seen_at = now
            task = await s.get(Task, run.task_id, with_for_update=self._postgres)
            assert task is not None
            target = TaskStatus(phase)
            if task.status != target.value and TaskStatus(task.status) in RUNNING_TASK_STATUSES:
                check_transition(TaskStatus(task.status), target)
                task.status = target.value
                task.updated_at = now
                self._event(s, task.id, "phase", phase, run_id=run.id)
            return task

    @retry_conflicts
    async def finish_run(
        self, run_id: int, agent_id: str, result: RunResult, policy: RetryPolicy
    ) -> RunEnd:
        """Record a run's result and move its task. Finishing twice is a no-op."""
        async with self._sessions.begin() as s:
            run = await self._run_of_agent(s, run_id, agent_id)
            task = await s.get(Task, run.task_id, with_for_update=self._postgres)
            assert task is not None
            if run.status not in _ACTIVE:
                return RunEnd(task=task, run=run, already_finished=True)
            now = utcnow()
            for name in (
                "cost_usd",
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_creation_tokens",
                "num_turns",
                "session_id",
                "branch",
                "commit_sha",
                "pr_number",
                "pr_url",
                "tests_command",
                "tests_passed",
                "tests_failed",
                "tests_ok",
                "fix_rounds",
                "changed_files",
                "log_excerpt",
            ):
                setattr(run, name, getattr(result, name))
            task.cost_usd = (task.cost_usd or 0.0) + result.cost_usd
            if result.session_id:
                task.session_id = result.session_id
            if result.branch:
                task.github_branch = result.branch
            if result.succeeded:
                await self._end_run(s, run, RunStatus.SUCCEEDED, now, message=result.message)
                task.feedback = None
                task.result_data = _result_data(result)
                task.error_message = None
                if result.pr_url:
                    task.github_pr_number = result.pr_number
                    task.github_pr_url = result.pr_url
                    target = TaskStatus.REVIEW
                else:
                    target = TaskStatus.COMPLETED
                if TaskStatus(task.status) in RUNNING_TASK_STATUSES:
                    task.status = target.value
                    task.updated_at = now
                    if target == TaskStatus.COMPLETED:
                        task.completed_at = now
                self._event(
                    s,
                    task.id,
                    "run_succeeded",
                    result.message or "run succeeded",
                    _result_data(result),
                    run_id=run.id,
                )
                return RunEnd(task=task, run=run)
            category = result.error_category or ErrorCategory.EXECUTION_ERROR
            if category == ErrorCategory.CANCELLED:
                await self._end_run(
                    s, run, RunStatus.CANCELLED, now, category=category, message=result.message
                )
                return RunEnd(task=task, run=run)
            await self._end_run(
                s, run, RunStatus.FAILED, now, category=category, message=result.message
            )
            decision = await self._after_failure(
                s, task, run, category, result.message, result.retry_after_seconds, policy, now
            )
            return RunEnd(
                task=task, run=run, retried=decision.retry, delay_seconds=decision.delay_seconds
            )

    # --- leases and timeouts ------------------------------------------------------------

    @retry_conflicts
    async def expire_runs(
        self, *, lease_seconds: float, dispatch_seconds: float, policy: RetryPolicy
    ) -> list[RunEnd]:
        """Runs no heartbeat or report mentioned for a lease are lost; their tasks retry."""
        async with self._sessions.begin() as s:
            now = utcnow()
            query = select(TaskRun).where(
                or_(
                    and_(
                        TaskRun.status == RunStatus.RUNNING.value,
                        TaskRun.last_seen_at < now - timedelta(seconds=lease_seconds),
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
        self, *, heartbeat_timeout: float, policy: RetryPolicy
    ) -> list[tuple[Agent, list[RunEnd]]]:
        """Agents silent for ``heartbeat_timeout`` go offline and lose their runs."""
        async with self._sessions.begin() as s:
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
                            TaskRun.agent_id == agent.id, TaskRun.status.in_(_ACTIVE)
                        )
                    )
                ).all()
                ends = [
                    await self._lose_run(
                        s, r, now, f"agent {agent.id} went offline", policy, ErrorCategory.LOST
                    )
                    for r in runs
                ]
                agent.active_task_count = 0
                out.append((agent, ends))
            return out

    @retry_conflicts
    async def timed_out_runs(
        self, *, task_timeout: float, grace: float, policy: RetryPolicy
    ) -> list[tuple[RunEnd, Agent]]:
        """Runs past the wall time (plus a grace for the agent's own watchdog) are ended
        as timeouts; the caller tells the agent to stop them."""
        async with self._sessions.begin() as s:
            now = utcnow()
            query = select(TaskRun).where(
                TaskRun.status == RunStatus.RUNNING.value,
                TaskRun.started_at < now - timedelta(seconds=task_timeout + grace),
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

    # --- views ----------------------------------------------------------------------

    async def queue_status(self) -> QueueStatus:
        async with self._sessions() as s:
            rows = (await s.execute(select(Task.status, func.count()).group_by(Task.status))).all()
            by_status = {status: count for status, count in rows}
            agents = (await s.scalars(select(Agent))).all()
            online = [a for a in agents if a.status in _ONLINE and not a.draining]
            capacity = sum(a.max_concurrent_tasks for a in online)
            used = sum(a.active_task_count for a in online)
            return QueueStatus(
                pending_tasks=by_status.get("queued", 0) + by_status.get("pending", 0),
                active_tasks=sum(by_status.get(st.value, 0) for st in RUNNING_TASK_STATUSES),
                completed_tasks=by_status.get("completed", 0),
                failed_tasks=by_status.get("failed", 0),
                available_nodes=sum(
                    1 for a in online if a.active_task_count < a.max_concurrent_tasks
                ),
                total_capacity=capacity,
                current_load=round(used / capacity, 4) if capacity else 0.0,
                by_status=by_status,
            )

    async def ping(self) -> None:
        async with self._sessions() as s:
            await s.execute(select(1))

    # --- webhooks and tokens --------------------------------------------------------------

    async def record_delivery(
        self, delivery_id: str, event: str, action: str | None, repository: str | None
    ) -> bool:
        """Store a webhook delivery; False when the id was seen before (a redelivery)."""
        try:
            async with self._sessions.begin() as s:
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
        async with self._sessions.begin() as s:
            row = await s.get(WebhookDelivery, delivery_id)
            if row is not None:
                row.status, row.reason, row.task_id = status, reason, task_id

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        async with self._sessions() as s:
            return await s.get(WebhookDelivery, delivery_id)

    async def add_api_token(self, name: str, token_hash: str) -> ApiToken:
        async with self._sessions.begin() as s:
            row = ApiToken(name=name, token_hash=token_hash, created_at=utcnow(), revoked=False)
            s.add(row)
            return row

    async def api_token_by_hash(self, token_hash: str) -> ApiToken | None:
        async with self._sessions() as s:
            return (
                await s.scalars(
                    select(ApiToken).where(
                        ApiToken.token_hash == token_hash, ApiToken.revoked.is_(False)
                    )
                )
            ).first()

    # --- shared steps -----------------------------------------------------------------

    async def _task_for_update(self, s: AsyncSession, task_id: int) -> Task:
        task = await s.get(Task, task_id, with_for_update=self._postgres)
        if task is None:
            raise NotFound(kind="task", id=task_id)
        return task

    async def _active_run(self, s: AsyncSession, task_id: int) -> TaskRun | None:
        return (
            await s.scalars(
                select(TaskRun).where(TaskRun.task_id == task_id, TaskRun.status.in_(_ACTIVE))
            )
        ).first()

    async def _end_run(
        self,
        s: AsyncSession,
        run: TaskRun,
        status: RunStatus,
        now: datetime,
        *,
        category: ErrorCategory | None = None,
        message: str | None = None,
    ) -> Agent:
        """End a run and give its agent slot back (with the agent's statistics).

        One ``UPDATE … RETURNING`` on the agent row: the hottest rows of the schema are
        locked for as short a time as a statement allows."""
        run.status = status.value
        run.ended_at = now
        run.error_category = category.value if category else None
        run.message = message
        active = case((Agent.active_task_count > 0, Agent.active_task_count - 1), else_=0)
        values: dict[str, Any] = {
            "active_task_count": active,
            # idle/busy/overloaded follow the load; offline, maintenance and error stay
            "status": case(
                (
                    Agent.status.in_(_ONLINE),
                    case(
                        (active <= 0, AgentStatus.IDLE.value),
                        (active >= Agent.max_concurrent_tasks, AgentStatus.OVERLOADED.value),
                        else_=AgentStatus.BUSY.value,
                    ),
                ),
                else_=Agent.status,
            ),
        }
        if status == RunStatus.SUCCEEDED:
            duration = (now - run.started_at).total_seconds()
            values["total_tasks_completed"] = Agent.total_tasks_completed + 1
            values["last_task_completed_at"] = now
            values["average_task_duration"] = Agent.average_task_duration + (
                duration - Agent.average_task_duration
            ) / (Agent.total_tasks_completed + 1)
        elif status in (RunStatus.FAILED, RunStatus.LOST):
            values["total_tasks_failed"] = Agent.total_tasks_failed + 1
        agent = (
            await s.execute(
                update(Agent)
                .where(Agent.id == run.agent_id)
                .values(**values)
                .returning(Agent)
                .execution_options(populate_existing=True)
            )
        ).scalar_one()
        return agent

    async def _lose_run(
        self,
        s: AsyncSession,
        run: TaskRun,
        now: datetime,
        message: str,
        policy: RetryPolicy,
        category: ErrorCategory,
        status: RunStatus = RunStatus.LOST,
    ) -> RunEnd:
        await self._end_run(s, run, status, now, category=category, message=message)
        task = await s.get(Task, run.task_id, with_for_update=self._postgres)
        assert task is not None
        decision = await self._after_failure(s, task, run, category, message, None, policy, now)
        return RunEnd(
            task=task, run=run, retried=decision.retry, delay_seconds=decision.delay_seconds
        )

    async def _after_failure(
        self,
        s: AsyncSession,
        task: Task,
        run: TaskRun,
        category: ErrorCategory,
        message: str,
        retry_after: float | None,
        policy: RetryPolicy,
        now: datetime,
    ) -> retry.RetryDecision:
        """Requeue with back-off or fail the task; the retry counter always increments."""
        if TaskStatus(task.status) not in RUNNING_TASK_STATUSES:
            return retry.RetryDecision(False, reason=f"task is {task.status}")
        decision = retry.decide(
            category,
            retries_so_far=task.retry_count,
            max_retries=policy.max_retries,
            retry_after=retry_after,
            base=policy.base_seconds,
            cap=policy.cap_seconds,
        )
        task.updated_at = now
        task.assigned_agent_id = None
        if decision.retry:
            task.retry_count += 1
            task.status = TaskStatus.QUEUED.value
            task.queued_at = now + timedelta(seconds=decision.delay_seconds)
            task.not_before = now + timedelta(seconds=decision.delay_seconds)
            self._event(
                s,
                task.id,
                "retry_scheduled",
                f"run {run.id} {category.value}: {message}; retry {task.retry_count} in "
                f"{decision.delay_seconds:.0f} s",
                {"category": category.value},
                run_id=run.id,
            )
        else:
            task.status = TaskStatus.FAILED.value
            task.failed_at = now
            task.error_message = f"{category.value}: {message}" if message else category.value
            self._event(
                s,
                task.id,
                "failed",
                task.error_message,
                {"category": category.value, "reason": decision.reason},
                run_id=run.id,
                level="error",
            )
        return decision

    @staticmethod
    def _event(
        s: AsyncSession,
        task_id: int,
        kind: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        run_id: int | None = None,
        level: str = "info",
    ) -> None:
        s.add(
            TaskEvent(
                task_id=task_id,
                run_id=run_id,
                seq=None,
                timestamp=utcnow(),
                kind=kind,
                level=level,
                message=message,
                details=details or {},
            )
        )

    # --- GitHub loop ------------------------------------------------------------------

    async def task_for_branch(self, repository: str, branch: str) -> Task | None:
        """The newest task of ``repository`` whose runs pushed ``branch``."""
        async with self._sessions() as s:
            by_task = select(Task).where(
                Task.github_repository == repository, Task.github_branch == branch
            )
            task = (await s.scalars(by_task.order_by(Task.id.desc()))).first()
            if task is not None:
                return task
            by_run = (
                select(Task)
                .join(TaskRun, TaskRun.task_id == Task.id)
                .where(Task.github_repository == repository, TaskRun.branch == branch)
                .order_by(Task.id.desc())
            )
            return (await s.scalars(by_run)).first()

    async def task_for_pull_request(self, repository: str, number: int) -> Task | None:
        """The newest task of ``repository`` that recorded pull request ``number``."""
        async with self._sessions() as s:
            query = select(Task).where(
                Task.github_repository == repository, Task.github_pr_number == number
            )
            return (await s.scalars(query.order_by(Task.id.desc()))).first()

    @retry_conflicts
    async def attach_pull_request(self, task_id: int, number: int, url: str) -> tuple[Task, bool]:
        """Record a task's pull request; ``True`` when the task had none (or another).

        A task whose run is still active keeps its status: the run's result moves it to
        ``review``. A running task without an active run (its result was lost) moves now.
        """
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
                raise Conflict(f"task {task_id} is {task.status}")
            new = task.github_pr_number != number
            task.github_pr_number, task.github_pr_url = number, url
            task.updated_at = utcnow()
            if (
                TaskStatus(task.status) in RUNNING_TASK_STATUSES
                and await self._active_run(s, task.id) is None
            ):
                task.status = TaskStatus.REVIEW.value
            if new:
                self._event(s, task.id, "pull_request", f"pull request #{number} opened: {url}")
            return task, new

    @retry_conflicts
    async def add_feedback(self, task_id: int, feedback: str) -> tuple[Task, str]:
        """Take review feedback, one run at a time per task (so per pull request).

        Returns the task and what happened: ``queued`` (the task was in review: a follow-up
        run is queued), ``merged`` (a follow-up is queued but not started: the feedback
        joins it) or ``deferred`` (a run is active: the feedback waits for its end, see
        :meth:`take_deferred_feedback`).
        """
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            status = TaskStatus(task.status)
            if status in TERMINAL_TASK_STATUSES:
                raise Conflict(f"task {task_id} is {task.status}; feedback is not taken")
            now = utcnow()
            if status == TaskStatus.REVIEW:
                self._queue_feedback(s, task, feedback, now)
                return task, "queued"
            if status == TaskStatus.QUEUED and task.feedback:
                task.feedback = f"{task.feedback}\n\n{feedback}"
                task.updated_at = now
                # not "feedback": that kind marks deferred feedback as taken
                self._event(s, task.id, "feedback_merged", "more feedback for the queued follow-up")
                return task, "merged"
            self._event(
                s,
                task.id,
                "feedback_deferred",
                "feedback kept until the active run ends",
                {"feedback": feedback},
            )
            return task, "deferred"

    @retry_conflicts
    async def take_deferred_feedback(self, task_id: int) -> Task | None:
        """Queue the feedback deferred since the last follow-up, if the task is in review.

        Deferred feedback is every ``feedback_deferred`` event newer than the task's last
        ``feedback`` event (the one that queued a follow-up), so nothing is taken twice.
        """
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            if task.status != TaskStatus.REVIEW.value:
                return None
            last_taken = await s.scalar(
                select(func.max(TaskEvent.id)).where(
                    TaskEvent.task_id == task_id, TaskEvent.kind == "feedback"
                )
            )
            waiting = (
                await s.scalars(
                    select(TaskEvent)
                    .where(
                        TaskEvent.task_id == task_id,
                        TaskEvent.kind == "feedback_deferred",
                        TaskEvent.id > (last_taken or 0),
                    )
                    .order_by(TaskEvent.id)
                )
            ).all()
            texts = [str(e.details.get("feedback") or "") for e in waiting]
            texts = [t for t in texts if t]
            if not texts:
                return None
            self._queue_feedback(s, task, "\n\n".join(texts), utcnow())
            return task

    def _queue_feedback(self, s: AsyncSession, task: Task, feedback: str, now: datetime) -> None:
        check_transition(TaskStatus(task.status), TaskStatus.QUEUED)
        task.status = TaskStatus.QUEUED.value
        task.feedback = feedback
        task.queued_at = now
        task.not_before = None
        task.updated_at = now
        self._event(s, task.id, "feedback", "follow-up queued with review feedback")

    @retry_conflicts
    async def mark_once(self, task_id: int, kind: str, message: str) -> bool:
        """Record a ``kind`` event for the task unless one exists: ``True`` the first time.

        The GitHub loop claims a comment with it before posting, so replicas and restarts
        post it at most once.
        """
        async with self._sessions.begin() as s:
            task = await self._task_for_update(s, task_id)
            seen = await s.scalar(
                select(TaskEvent.id)
                .where(TaskEvent.task_id == task.id, TaskEvent.kind == kind)
                .limit(1)
            )
            if seen is not None:
                return False
            self._event(s, task.id, kind, message)
            return True

    async def tasks_without_event(
        self,
        statuses: Sequence[TaskStatus],
        kind: str,
        *,
        repositories: Sequence[str],
        limit: int = 100,
    ) -> Sequence[Task]:
        """Tasks of ``repositories`` in ``statuses`` with no ``kind`` event yet, oldest first."""
        marked = select(TaskEvent.id).where(TaskEvent.task_id == Task.id, TaskEvent.kind == kind)
        query = (
            select(Task)
            .where(
                Task.status.in_([st.value for st in statuses]),
                Task.github_repository.in_(list(repositories)),
                ~marked.exists(),
            )
            .order_by(Task.id)
            .limit(limit)
        )
        async with self._sessions() as s:
            return (await s.scalars(query)).all()

    async def repository_cost_since(self, repository: str, since: datetime) -> float:
        """Dollars reported by the runs of ``repository`` that ended since ``since``."""
        async with self._sessions() as s:
            total = await s.scalar(
                select(func.coalesce(func.sum(TaskRun.cost_usd), 0.0))
                .join(Task, Task.id == TaskRun.task_id)
                .where(Task.github_repository == repository, TaskRun.ended_at >= since)
            )
            return float(total or 0.0)


def _view(agent: Agent, extra: int = 0) -> scoring.AgentView:
    return scoring.AgentView(
        id=agent.id,
        specialties=agent.specialties,
        capabilities=agent.capabilities,
        active=agent.active_task_count + extra,
        capacity=agent.max_concurrent_tasks,
        completed=agent.total_tasks_completed,
        failed=agent.total_tasks_failed,
        average_duration_seconds=agent.average_task_duration,
    )


def _taken(chosen: list[tuple[Task, Agent]], agent_id: str) -> int:
    return sum(1 for _, a in chosen if a.id == agent_id)


def _result_data(result: RunResult) -> dict[str, Any]:
    return result.model_dump(mode="json", exclude={"log_excerpt", "message"})
