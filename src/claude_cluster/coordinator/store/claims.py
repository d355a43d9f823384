"""Claiming: ready tasks for the best agents, one transaction per batch.

A task is claimed once: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite, and a partial unique index on active runs behind both. An agent slot is taken by a
conditional update. Claims take one advisory lock on PostgreSQL (SQLite's writers are
serial anyway), so ``MAX_CONCURRENT_TASKS`` holds exactly across replicas.

On PostgreSQL a claim is BEGIN, the lock, the candidate agents, the ready tasks, then one
statement for all its writes (``transitions.assign_statement``: the slots, the runs, the tasks'
moves and their events), then COMMIT; SQLite takes the same steps one statement each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from claude_cluster.coordinator.store import transitions
from claude_cluster.coordinator.store.common import (
    ACTIVE_RUNS,
    ONLINE_AGENTS,
    StoreBase,
    retry_conflicts,
    utcnow,
)
from claude_cluster.coordinator.store.tables import Agent, Task, TaskRun
from claude_cluster.domain import scoring
from claude_cluster.domain.states import AgentStatus, TaskStatus

#: the PostgreSQL advisory lock every claim takes first (held to its commit), so the count
#: of active runs it checks against ``MAX_CONCURRENT_TASKS`` includes every other claim's
CLAIM_LOCK = 0x636C61696D  # "claim"


_QUEUED = Task.status == TaskStatus.QUEUED.value


def _ready(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """A queued task past its back-off at ``now``."""
    return _QUEUED & or_(Task.not_before.is_(None), Task.not_before <= now)


#: a queued task past its back-off exists (parameter ``now``); read in ``ix_tasks_claim``
_ANY_READY = select(
    select(Task.id).where(_ready(bindparam("now", type_=Task.__table__.c.not_before.type))).exists()
)
#: task ``task`` is queued (a manual assignment overrides the back-off)
_TASK_QUEUED = select(select(Task.id).where(_QUEUED, Task.id == bindparam("task")).exists())


#: what a claim reads of a ready task on PostgreSQL: the scoring's inputs
#: (``scoring.pick``), what a new run takes from its task (``transitions.new_run``) and the
#: status it leaves; not the title, description, labels or results (64 whole rows are
#: about 150 KB to fetch and decode at the planner's estimate of 2.4 KB a row)
_CHOICE_COLUMNS: tuple[Any, ...] = (
    Task.id,
    Task.status,
    Task.priority,
    Task.requirements,
    Task.preferences,
    Task.required_runner,
    Task.estimated_duration_minutes,
    Task.attempts,
    Task.feedback,
    Task.github_branch,
)


@dataclass(frozen=True)
class Claim:
    """A task claimed for an agent: push ``run`` to ``agent`` next."""

    task: Task
    run: TaskRun
    agent: Agent


class ClaimQueries(StoreBase):
    @retry_conflicts
    async def claim(
        self,
        *,
        max_active: int,
        batch: int = 16,
        only_task: int | None = None,
        only_agent: str | None = None,
        probe: bool = True,
    ) -> list[Claim]:
        """Claim up to ``batch`` ready tasks for the best agents, in one transaction.

        SQLAlchemy Core throughout (rows, not ORM objects): read the candidate agents with
        the count of active runs, then the ready tasks (``SKIP LOCKED``), score, then write
        (:func:`_assign`, one statement on PostgreSQL). Before all that, on PostgreSQL and
        when ``probe``, one statement outside the transaction asks whether any task is
        ready at all: the claim a finished run's freed slot triggers usually finds none.
        (The dispatcher skips it after queueing a task. SQLite has no round trips to save,
        and its transactions begin with ``BEGIN IMMEDIATE``.)
        """
        if self._postgres and probe and not await self._any_ready(only_task):
            return []
        async with self._tx() as s:
            conn = await s.connection()
            if self._postgres:  # the global cap holds across replicas: one claim at a time
                await conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK)))
            now = utcnow()
            agent_query = transitions.select_rows(Agent).add_columns(
                select(func.count())
                .select_from(TaskRun)
                .where(TaskRun.status.in_(ACTIVE_RUNS))
                .scalar_subquery()
                .label("active_runs")
            )
            agent_query = agent_query.where(
                Agent.status.in_(ONLINE_AGENTS),
                Agent.draining.is_(False),
                Agent.not_ready_reason.is_(None),
                Agent.active_task_count < Agent.max_concurrent_tasks,
                or_(Agent.cooldown_until.is_(None), Agent.cooldown_until <= now),
            )
            if only_agent is not None:
                agent_query = agent_query.where(Agent.id == only_agent)
            rows = (await conn.execute(agent_query)).all()
            if not rows:
                return []
            # the active runs counted in the same statement (after the lock: every other
            # claim has committed)
            room = min(batch, max_active - rows[0].active_runs)
            if room <= 0:
                return []
            agents = {
                row.id: transitions.prefixed_snapshot(Agent, "", row, leave_out="active_runs")
                for row in rows
            }
            # a manual assignment overrides the back-off (and a hold)
            ready = _ready(now) if only_task is None else _QUEUED & (Task.id == only_task)
            # a task that needs a runner no candidate offers is not read at all (in SQL, so
            # a queue of such tasks neither costs rows nor blocks the tasks behind it)
            offered = sorted({r for a in agents.values() for r in a.runners or ()})
            runner_ok: ColumnElement[bool] = Task.required_runner.is_(None)
            if offered:  # (no empty IN: a plain IS NULL when no candidate offers any)
                runner_ok = or_(runner_ok, Task.required_runner.in_(offered))
            tasks = await self._ready_tasks(
                conn, ready & runner_ok, room * 4 if only_task is None else 1
            )
            chosen = _choose(tasks, agents, room, require_match=only_agent is None)
            if not chosen:
                return []
            if self._postgres:
                return await _assign(s, conn, chosen, now)
            return await self._assign_in_steps(s, conn, chosen, now)

    async def _any_ready(self, only_task: int | None) -> bool:
        """Whether a task is queued and past its back-off (or is ``only_task`` and queued),
        whichever agent could take it: the claim decides that."""
        async with self._statement() as (conn, _):
            query = _ANY_READY if only_task is None else _TASK_QUEUED
            params = {"now": utcnow()} if only_task is None else {"task": only_task}
            return bool((await conn.execute(query, params)).scalar())

    async def _ready_tasks(
        self, conn: AsyncConnection, ready: ColumnElement[bool], limit: int
    ) -> list[Task]:
        """Up to ``limit`` ``ready`` tasks, most urgent first, then oldest: one read of
        ``ix_tasks_claim`` (status, priority_rank DESC, created_at, id) in its own order,
        which stops at the LIMIT however long the queue is. On PostgreSQL only the columns
        the choice and the run need (:data:`_CHOICE_COLUMNS`; the writes return the whole
        row of each claimed task), on SQLite whole rows (its steps move them)."""
        if self._postgres:
            query = select(*_CHOICE_COLUMNS).with_for_update(skip_locked=True)
        else:
            query = transitions.select_rows(Task)
        query = (
            query.where(ready)
            .order_by(Task.priority_rank.desc(), Task.created_at, Task.id)
            .limit(limit)
        )
        return [transitions.snapshot(Task, row) for row in await conn.execute(query)]

    async def _assign_in_steps(
        self,
        s: AsyncSession,
        conn: AsyncConnection,
        chosen: list[tuple[Task, Agent]],
        now: datetime,
    ) -> list[Claim]:
        """The claim's writes one statement each (SQLite): the slots, then the runs of the
        tasks whose agent still had room, then the tasks' moves with their events."""
        granted = await self._take_slots(conn, chosen)
        chosen = [(task, agent) for task, agent in chosen if agent.id in granted]
        if not chosen:
            return []
        runs = [transitions.new_run(task, agent.id, now) for task, agent in chosen]
        ids = (
            await conn.execute(
                insert(TaskRun).returning(TaskRun.id, sort_by_parameter_order=True),
                [transitions.values_of(run) for run in runs],
            )
        ).scalars()
        for run, run_id in zip(runs, ids, strict=True):
            run.id = run_id
        claims = [
            Claim(task=task, run=run, agent=agent)
            for (task, agent), run in zip(chosen, runs, strict=True)
        ]
        await transitions.move_tasks(
            s,
            [
                transitions.Move(
                    c.task,
                    TaskStatus.ASSIGNED,
                    "assigned",
                    f"run {c.run.id} (attempt {c.run.attempt}) to {c.agent.id}",
                    {"run_id": c.run.id, "agent_id": c.agent.id},
                    run_id=c.run.id,
                    fields={"attempts": c.task.attempts, "assigned_agent_id": c.agent.id},
                )
                for c in claims
            ],
            now,
        )
        return claims

    @staticmethod
    async def _take_slots(conn: AsyncConnection, chosen: list[tuple[Task, Agent]]) -> set[str]:
        """Take the agents' slots with conditional updates: another coordinator may have
        taken some since they were read; tasks whose agent has no room left stay queued."""
        taken: dict[str, int] = {}
        agents: dict[str, Agent] = {}
        for _, agent in chosen:
            taken[agent.id] = taken.get(agent.id, 0) + 1
            agents[agent.id] = agent
        granted: set[str] = set()
        for agent_id, n in sorted(taken.items()):  # one lock order across replicas
            after = Agent.active_task_count + n
            row = (
                await conn.execute(
                    update(Agent)
                    .where(Agent.id == agent_id, after <= Agent.max_concurrent_tasks)
                    .values(
                        active_task_count=after,
                        # candidates are online, so the status follows the new load
                        status=case(
                            (after >= Agent.max_concurrent_tasks, AgentStatus.OVERLOADED.value),
                            else_=AgentStatus.BUSY.value,
                        ),
                    )
                    .returning(Agent.active_task_count, Agent.status)
                )
            ).first()
            if row is not None:
                granted.add(agent_id)
                agent = agents[agent_id]
                agent.active_task_count, agent.status = row
        return granted


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
        runners=agent.runners,
    )


def _choose(
    tasks: list[Task], agents: dict[str, Agent], room: int, *, require_match: bool
) -> list[tuple[Task, Agent]]:
    """The best agent for each task in queue order, counting the slots taken so far."""
    views = {a.id: _view(a) for a in agents.values()}
    taken: dict[str, int] = {}
    chosen: list[tuple[Task, Agent]] = []
    for task in tasks:
        if len(chosen) >= room:
            break
        best = scoring.pick(
            list(views.values()),
            task.requirements,
            task.estimated_duration_minutes,
            require_match=require_match,
            preferences=task.preferences,
            runner=task.required_runner,
        )
        if not best:
            continue
        pick = best[0]
        chosen.append((task, agents[pick.id]))
        taken[pick.id] = taken.get(pick.id, 0) + 1
        views[pick.id] = _view(agents[pick.id], extra=taken[pick.id])
    return chosen


async def _assign(
    s: AsyncSession, conn: AsyncConnection, chosen: list[tuple[Task, Agent]], now: datetime
) -> list[Claim]:
    """The claim's writes in one PostgreSQL statement (``transitions.assign_statement``); the
    claims in queue order, those whose agent had no room left since it was read dropped."""
    first_runs = [transitions.new_run(task, agent.id, now) for task, agent in chosen]
    rows = (
        await conn.execute(
            transitions.assign_statement(),
            {
                "now": now,
                "task_ids": [run.task_id for run in first_runs],
                "agent_ids": [run.agent_id for run in first_runs],
                "attempts": [run.attempt for run in first_runs],
                "kinds": [run.kind for run in first_runs],
                "branches": [run.branch for run in first_runs],
            },
        )
    ).all()
    if rows and rows[0].runs_inserted != len(rows):  # a run without its task's move
        raise RuntimeError("a claimed task changed under its row lock")
    by_task = {row.run_task_id: row for row in rows}
    claims = []
    for task, agent in chosen:
        row = by_task.get(task.id)
        if row is None:
            continue
        agent.active_task_count, agent.status = row.agent_active, row.agent_status
        claimed = transitions.prefixed_snapshot(Task, "task_", row)
        claims.append(Claim(claimed, transitions.prefixed_snapshot(TaskRun, "run_", row), agent))
        transitions.note_change(
            s, transitions.StatusChange(task.id, task.status, claimed.status, claimed.priority)
        )
    return claims
