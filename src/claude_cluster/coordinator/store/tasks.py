"""Tasks: creation (one open task per issue), lookup (by id, issue, branch or pull
request), listing, changes, cancelling, status changes from outside a run, and a task's runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from claude_cluster.coordinator.store import transitions
from claude_cluster.coordinator.store.common import (
    ACTIVE_RUNS,
    TERMINAL_TASKS,
    get_or_raise,
    retry_conflicts,
    utcnow,
)
from claude_cluster.coordinator.store.run_end import RunEndSteps
from claude_cluster.coordinator.store.tables import Agent, Task, TaskRun
from claude_cluster.domain.analysis import preferences_from_text
from claude_cluster.domain.contract import known_runner
from claude_cluster.domain.states import (
    RUNNING_TASK_STATUSES,
    TERMINAL_TASK_STATUSES,
    ErrorCategory,
    Priority,
    RunStatus,
    TaskStatus,
    check_transition,
)
from claude_cluster.errors import Conflict


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
    preferences: list[str] = field(default_factory=list)
    #: the runner the operator's contract names (checked against the known runners)
    required_runner: str | None = None


def _new_task_values(new: NewTask, now: datetime) -> dict[str, Any]:
    """The columns of the queued task ``new`` (the same keys for every task: one prepared
    statement)."""
    values: dict[str, Any] = dict(
        title=new.title,
        description=new.description,
        priority=new.priority.value,
        priority_rank=new.priority.rank,
        github_repository=new.github_repository,
        github_issue_number=new.github_issue_number,
        repository_url=new.repository_url,
        labels=new.labels,
        requirements=new.requirements,
        preferences=new.preferences,
        required_runner=known_runner(new.required_runner),
        estimated_complexity=new.complexity,
        estimated_duration_minutes=new.estimated_duration_minutes,
        budget_usd=new.budget_usd,
        test_command=new.test_command,
        created_by=new.created_by,
        result_data={},
        created_at=now,
    )
    transitions.queue_new_task(values, now)
    return values


class TaskQueries(RunEndSteps):
    async def create_task(self, new: NewTask) -> tuple[Task, bool]:
        """Insert a queued task, or return the open task of the same issue (``created`` False).

        On PostgreSQL one statement (:func:`transitions.create_statement`): the insert,
        skipped when the issue has an open task, and its event. On SQLite one transaction:
        the lookup, the insert, its event. Two racing creators both pass the lookup; the
        partial unique index stops the second, which then returns the winner's row."""
        now = utcnow()
        values = _new_task_values(new, now)
        details = {
            "requirements": new.requirements,
            "preferences": new.preferences,
            "created_by": new.created_by,
            **({"required_runner": values["required_runner"]} if values["required_runner"] else {}),
        }
        for _ in range(3):
            if self._postgres:
                async with self._statement() as (conn, changes):
                    task = await transitions.create(conn, values, details, changes)
                if task is not None:
                    return task, True
                found = await self._open_task_for_issue(
                    new.github_repository, new.github_issue_number
                )
                if found is not None:  # (else it ended in between: insert again)
                    return found, False
                continue
            try:
                async with self._tx() as s:
                    conn = await s.connection()
                    found_row = (
                        await conn.execute(
                            transitions.select_rows(Task).where(
                                Task.github_repository == new.github_repository,
                                Task.github_issue_number == new.github_issue_number,
                                Task.status.not_in(TERMINAL_TASKS),
                            )
                        )
                    ).first()
                    if found_row is not None:
                        return transitions.snapshot(Task, found_row), False
                    task = await transitions.insert_task(s, values)
                    await transitions.created(s, task, now, details)
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
                        Task.status.not_in(TERMINAL_TASKS),
                    )
                )
            ).first()

    async def open_task_for_issue(self, repository: str, issue: int) -> Task | None:
        return await self._open_task_for_issue(repository, issue)

    async def get_task(self, task_id: int) -> Task:
        async with self._sessions() as s:
            return await get_or_raise(s, Task, task_id, "task")

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
        async with self._tx() as s:
            task = await self._task_for_update(s, task_id)
            if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
                raise Conflict(f"task {task_id} is {task.status}; it can no longer be changed")
            for key, value in changes.items():
                if key == "priority":
                    task.priority = Priority(value).value
                    task.priority_rank = Priority(value).rank
                else:
                    setattr(task, key, value)
            if "title" in changes or "description" in changes:
                task.preferences = preferences_from_text(task.title, task.description)
            task.updated_at = utcnow()
            self._event(s, task.id, "updated", "task updated", {"fields": sorted(changes)})
            return task

    @retry_conflicts
    async def cancel_task(
        self, task_id: int, reason: str
    ) -> tuple[Task, tuple[TaskRun, Agent] | None]:
        """Cancel a task; returns the run to stop on its agent, if one was active."""
        async with self._tx() as s:
            # lock order run → task → agent: the active run (if any) before the task
            run = await self._active_run(s, task_id, lock=True)
            task = await self._task_for_update(s, task_id)
            check_transition(TaskStatus(task.status), TaskStatus.CANCELLED)  # before the run ends
            now = utcnow()
            to_stop = None
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
            task.error_message = reason
            await transitions.move_task(
                s, task, TaskStatus.CANCELLED, now, kind="cancelled", message=reason
            )
            return task, to_stop

    @retry_conflicts
    async def retry_now(self, task_id: int, who: str) -> Task:
        """A queued task waiting out its retry back-off becomes ready at once."""
        async with self._tx() as s:
            task = await self._task_for_update(s, task_id)
            if task.status != TaskStatus.QUEUED.value:
                raise Conflict(
                    f"task {task_id} is {task.status}; only a queued task can be retried now"
                )
            now = utcnow()
            task.not_before = None
            task.queued_at = now
            task.updated_at = now
            self._event(s, task.id, "retry_now", f"{who} asked to retry now")
            return task

    @retry_conflicts
    async def release_task(
        self, task_id: int, reason: str, *, hold_seconds: float = 0.0
    ) -> tuple[Task, tuple[TaskRun, Agent] | None]:
        """Take a task back from its agent: the active run ends ``cancelled`` and the task
        is ``queued`` again without counting a retry (a person moved it, it did not fail).
        ``hold_seconds`` keeps the dispatcher off it meanwhile (a manual assignment still
        claims it). A queued task is returned as it is, held too. Returns the run to stop
        on its agent."""
        async with self._tx() as s:
            run = await self._active_run(s, task_id, lock=True)  # run → task → agent
            task = await self._task_for_update(s, task_id)
            hold = utcnow() + timedelta(seconds=hold_seconds) if hold_seconds else None
            if task.status == TaskStatus.QUEUED.value:
                if hold is not None:
                    task.not_before = max(hold, task.not_before or hold)
                return task, None
            if run is None or TaskStatus(task.status) not in RUNNING_TASK_STATUSES:
                raise Conflict(
                    f"task {task_id} is {task.status}; only a queued or running task can be "
                    "requeued"
                )
            now = utcnow()
            agent = await self._end_run(
                s, run, RunStatus.CANCELLED, now, category=ErrorCategory.CANCELLED, message=reason
            )
            task.assigned_agent_id = None
            task.not_before = hold
            await transitions.move_task(
                s,
                task,
                TaskStatus.QUEUED,
                now,
                kind="requeued",
                message=reason,
                details={"from_agent": agent.id},
                run_id=run.id,
            )
            return task, (run, agent)

    @retry_conflicts
    async def set_task_status(
        self, task_id: int, target: TaskStatus, message: str, **fields: Any
    ) -> tuple[Task, tuple[TaskRun, Agent] | None]:
        """A status change that comes from outside a run (a merged or closed PR).

        Ending the task ends its active run too (``cancelled``, as a cancel does): it is
        returned so the caller can stop it on its agent."""
        async with self._tx() as s:
            run = await self._active_run(s, task_id, lock=True)  # lock order run → task
            task = await self._task_for_update(s, task_id)
            check_transition(TaskStatus(task.status), target)
            now = utcnow()
            to_stop = None
            if run is not None and target in TERMINAL_TASK_STATUSES:
                agent = await self._end_run(
                    s,
                    run,
                    RunStatus.CANCELLED,
                    now,
                    category=ErrorCategory.CANCELLED,
                    message=message,
                )
                to_stop = (run, agent)
            if target in TERMINAL_TASK_STATUSES:
                task.feedback = None  # a follow-up still waiting will not run
            for key, value in fields.items():
                setattr(task, key, value)
            if target == TaskStatus.FAILED:
                task.error_message = message
            await transitions.move_task(s, task, target, now, kind=target.value, message=message)
            return task, to_stop

    async def list_runs(self, task_id: int) -> Sequence[TaskRun]:
        async with self._sessions() as s:
            await get_or_raise(s, Task, task_id, "task")
            return (
                await s.scalars(
                    select(TaskRun).where(TaskRun.task_id == task_id).order_by(TaskRun.attempt)
                )
            ).all()

    async def get_run(self, run_id: int) -> TaskRun:
        async with self._sessions() as s:
            return await get_or_raise(s, TaskRun, run_id, "run")

    async def _active_run(
        self, s: AsyncSession, task_id: int, *, lock: bool = False
    ) -> TaskRun | None:
        query = select(TaskRun).where(TaskRun.task_id == task_id, TaskRun.status.in_(ACTIVE_RUNS))
        if lock and self._postgres:
            query = query.with_for_update()
        return (await s.scalars(query)).first()

    # --- branches and pull requests (the GitHub loop) ----------------------------------

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
        async with self._tx() as s:
            task = await self._task_for_update(s, task_id)
            if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
                raise Conflict(f"task {task_id} is {task.status}")
            new = task.github_pr_number != number
            task.github_pr_number, task.github_pr_url = number, url
            now = utcnow()
            task.updated_at = now
            if new:
                self._event(s, task.id, "pull_request", f"pull request #{number} opened: {url}")
            if (
                TaskStatus(task.status) in RUNNING_TASK_STATUSES
                and await self._active_run(s, task.id) is None
            ):
                await transitions.move_task(
                    s,
                    task,
                    TaskStatus.REVIEW,
                    now,
                    kind="review",
                    message=f"pull request #{number} is open and no run is active",
                )
            return task, new
