"""Read queries of the dashboard: the queue by priority, the active runs with what they
cost so far, cost per repository, the task search (filters, sort, pages) and what an agent
ran lately. Nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, cast, func, select

from claude_cluster.coordinator.store.common import ACTIVE_RUNS, StoreBase, utcnow
from claude_cluster.coordinator.store.tables import Task, TaskEvent, TaskRun
from claude_cluster.run_log import RoundSums

#: the columns a task list may be sorted by (anything else is refused by the caller)
TASK_SORTS = {
    "id": Task.id,
    "priority": Task.priority_rank,
    "status": Task.status,
    "updated": Task.updated_at,
    "cost": Task.cost_usd,
    "repository": Task.github_repository,
}


@dataclass(frozen=True)
class TaskFilter:
    """A task search. Every field is optional; ``sort`` is a key of :data:`TASK_SORTS`."""

    status: str | None = None
    repository: str | None = None
    agent_id: str | None = None
    label: str | None = None
    text: str | None = None
    sort: str = "id"
    descending: bool = True
    limit: int = 25
    offset: int = 0


@dataclass(frozen=True)
class QueueBucket:
    priority: str
    count: int
    oldest_queued_at: datetime | None


@dataclass(frozen=True)
class ActiveRun:
    run: TaskRun
    task: Task
    #: dollars reported so far by the run's finished agent rounds and the one in progress
    cost_so_far: float
    #: part of ``cost_so_far`` is the agent's estimate for the round in progress
    estimated: bool = False


@dataclass(frozen=True)
class RepositoryCost:
    repository: str
    today: float
    week: float


class OverviewQueries(StoreBase):
    async def queue_by_priority(self) -> list[QueueBucket]:
        """Queued tasks per priority, most urgent first, with the oldest one's queue time."""
        query = (
            select(Task.priority, Task.priority_rank, func.count(), func.min(Task.queued_at))
            .where(Task.status == "queued")
            .group_by(Task.priority, Task.priority_rank)
            .order_by(Task.priority_rank.desc())
        )
        async with self._sessions() as s:
            rows = (await s.execute(query)).all()
        return [QueueBucket(priority, count, oldest) for priority, _, count, oldest in rows]

    async def active_runs(self) -> list[ActiveRun]:
        """Runs dispatching or running now, oldest first, with their tasks."""
        query = (
            select(TaskRun, Task)
            .join(Task, Task.id == TaskRun.task_id)
            .where(TaskRun.status.in_(ACTIVE_RUNS))
            .order_by(TaskRun.started_at)
        )
        async with self._sessions() as s:
            rows = (await s.execute(query)).all()
        so_far = await self.reported_so_far([run.id for run, _ in rows])
        none = RoundSums()
        return [
            ActiveRun(
                run,
                task,
                so_far.get(run.id, none).cost_usd,
                estimated=so_far.get(run.id, none).estimated,
            )
            for run, task in rows
        ]

    async def reported_so_far(self, run_ids: list[int]) -> dict[int, RoundSums]:
        """Turns and dollars of each run so far: its finished agent rounds
        (``runner_finished``) plus the newest ``round_progress`` of a round that has not
        finished (:class:`~claude_cluster.run_log.RoundSums`); runs without either are left
        out. The dashboard's and the progress comment's "so far".

        The run row learns its cost only from the result; these events arrive after each
        runner invocation and while one runs, so an active run shows what it has spent."""
        if not run_ids:
            return {}
        query = (
            select(TaskEvent.run_id, TaskEvent.kind, TaskEvent.details)
            .where(
                TaskEvent.run_id.in_(run_ids),
                TaskEvent.kind.in_(("runner_finished", "round_progress")),
            )
            .order_by(TaskEvent.run_id, TaskEvent.seq, TaskEvent.id)
        )
        sums: dict[int, RoundSums] = {}
        async with self._sessions() as s:
            for run_id, kind, details in (await s.execute(query)).all():
                if run_id is not None:
                    sums.setdefault(run_id, RoundSums()).add(kind, details or {})
        return {run_id: total for run_id, total in sums.items() if total.seen}

    async def cost_by_repository(self, today: datetime, week: datetime) -> list[RepositoryCost]:
        """Dollars of the runs that ended since ``today`` and since ``week``, per
        repository, the costliest week first."""

        def since(moment: datetime) -> Any:  # a Select of (repository, dollars)
            return (
                select(Task.github_repository, func.coalesce(func.sum(TaskRun.cost_usd), 0.0))
                .select_from(TaskRun)
                .join(Task, Task.id == TaskRun.task_id)
                .where(TaskRun.ended_at >= moment)
                .group_by(Task.github_repository)
            )

        async with self._sessions() as s:
            by_week: dict[str, float] = {r: t for r, t in (await s.execute(since(week))).all()}
            by_day: dict[str, float] = {r: t for r, t in (await s.execute(since(today))).all()}
        rows = [
            RepositoryCost(repo, float(by_day.get(repo, 0.0)), float(total))
            for repo, total in by_week.items()
        ]
        return sorted(rows, key=lambda r: (-r.week, r.repository))

    async def search_tasks(self, f: TaskFilter) -> tuple[Sequence[Task], int]:
        """One page of the tasks matching ``f`` and how many match in all."""
        query = select(Task)
        if f.status:
            query = query.where(Task.status == f.status)
        if f.repository:
            query = query.where(Task.github_repository == f.repository)
        if f.agent_id:
            query = query.where(Task.assigned_agent_id == f.agent_id)
        if f.label:
            # labels are a JSON list on both backends: match the label as a JSON string
            query = query.where(
                cast(Task.labels, Text).contains(json.dumps(f.label), autoescape=True)
            )
        if f.text:
            match = Task.title.icontains(f.text, autoescape=True)
            if f.text.lstrip("#").isdigit():
                match = match | (Task.github_issue_number == int(f.text.lstrip("#")))
            query = query.where(match)
        column = TASK_SORTS[f.sort]
        order = column.desc() if f.descending else column.asc()
        tiebreak = Task.id.desc() if f.descending else Task.id.asc()
        async with self._sessions() as s:
            total = await s.scalar(select(func.count()).select_from(query.subquery()))
            page = (
                await s.scalars(query.order_by(order, tiebreak).limit(f.limit).offset(f.offset))
            ).all()
        return page, int(total or 0)

    async def task_filter_choices(self) -> tuple[list[str], list[str]]:
        """The repositories and agents that tasks name (for the filter menus)."""
        async with self._sessions() as s:
            repos = (
                await s.scalars(
                    select(Task.github_repository).distinct().order_by(Task.github_repository)
                )
            ).all()
            agents = (
                await s.scalars(select(TaskRun.agent_id).distinct().order_by(TaskRun.agent_id))
            ).all()
        return list(repos), list(agents)

    async def recent_repositories(self, agent_id: str, *, days: int = 7) -> list[str]:
        """Repositories the agent ran a task of in the last ``days``: its mirrors of them
        are warm (the agent keeps a mirror per repository it has worked on)."""
        query = (
            select(Task.github_repository)
            .select_from(TaskRun)
            .join(Task, Task.id == TaskRun.task_id)
            .where(
                TaskRun.agent_id == agent_id,
                TaskRun.started_at >= utcnow() - timedelta(days=days),
            )
            .group_by(Task.github_repository)
            .order_by(func.max(TaskRun.started_at).desc())
        )
        async with self._sessions() as s:
            return list((await s.scalars(query)).all())
