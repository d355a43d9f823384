"""The one owner of task and run status.

Every status a task or a run takes is written here and nowhere else
(``tests/unit/coordinator/test_status_owner.py`` fails on any other assignment):
:func:`move_task` checks ``domain/states.py::TRANSITIONS``, stamps the timestamp the new
status carries, records the task event and notes a :class:`StatusChange` on the session;
:func:`move_run` does the same for runs with ``RUN_TRANSITIONS``. The store's transaction
helper (:meth:`~claude_cluster.coordinator.store.common.StoreBase._tx`) hands the noted
changes to the coordinator service once the transaction has committed, so every change is
counted and published exactly once whichever query made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from claude_cluster.coordinator.store.tables import Task, TaskEvent, TaskRun
from claude_cluster.domain.states import (
    ErrorCategory,
    RunStatus,
    TaskStatus,
    check_run_transition,
    check_transition,
)

#: where a transaction keeps the changes it made until it commits
CHANGES_KEY = "claude_cluster.status_changes"


@dataclass(frozen=True)
class StatusChange:
    """A task moved from ``previous`` (``None``: it was created) to ``status``."""

    task_id: int
    previous: str | None
    status: str
    priority: str


#: the timestamp column each status stamps when a task enters it
_STAMPS = {
    TaskStatus.QUEUED: "queued_at",
    TaskStatus.ASSIGNED: "assigned_at",
    TaskStatus.COMPLETED: "completed_at",
    TaskStatus.FAILED: "failed_at",
    TaskStatus.CANCELLED: "cancelled_at",
}


def note_change(s: AsyncSession, change: StatusChange) -> None:
    s.info.setdefault(CHANGES_KEY, []).append(change)


def add_event(
    s: AsyncSession,
    task_id: int,
    kind: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    run_id: int | None = None,
    level: str = "info",
    now: datetime,
) -> None:
    """Record a coordinator event (``seq`` is only set on the agent's own events)."""
    s.add(
        TaskEvent(
            task_id=task_id,
            run_id=run_id,
            seq=None,
            timestamp=now,
            kind=kind,
            level=level,
            message=message,
            details=details or {},
        )
    )


def queue_new_task(s: AsyncSession, task: Task, now: datetime) -> None:
    """A task being created enters the queue (before its insert is flushed)."""
    task.status = TaskStatus.QUEUED.value
    task.queued_at = now
    task.updated_at = now


def created(s: AsyncSession, task: Task, now: datetime, details: dict[str, Any]) -> None:
    """Record the creation of a flushed task (it has its id now)."""
    add_event(s, task.id, "created", f"queued with priority {task.priority}", details, now=now)
    note_change(s, StatusChange(task.id, None, task.status, task.priority))


def move_task(
    s: AsyncSession,
    task: Task,
    target: TaskStatus,
    now: datetime,
    *,
    kind: str,
    message: str,
    details: dict[str, Any] | None = None,
    run_id: int | None = None,
    level: str = "info",
    queued_at: datetime | None = None,
) -> None:
    """Move ``task`` to ``target``: checked, stamped, logged and noted for the service.

    ``queued_at`` overrides the queue stamp (a retry is queued from the end of its back-off).
    Raises :class:`~claude_cluster.errors.IllegalTransition` for a move the table forbids.
    """
    previous = TaskStatus(task.status)
    check_transition(previous, target)
    task.status = target.value
    task.updated_at = now
    if target == TaskStatus.IN_PROGRESS:
        task.started_at = task.started_at or now
    elif target in _STAMPS:
        setattr(task, _STAMPS[target], queued_at or now)
    add_event(s, task.id, kind, message, details, run_id=run_id, level=level, now=now)
    note_change(s, StatusChange(task.id, previous.value, target.value, task.priority))


def new_run(task: Task, agent_id: str, now: datetime) -> TaskRun:
    """A run of ``task`` for ``agent_id``, being pushed (``dispatching``), attempt counted."""
    task.attempts += 1
    return TaskRun(
        task_id=task.id,
        attempt=task.attempts,
        agent_id=agent_id,
        status=RunStatus.DISPATCHING.value,
        kind="followup" if task.feedback else "initial",
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


def move_run(
    run: TaskRun,
    target: RunStatus,
    now: datetime,
    *,
    category: ErrorCategory | None = None,
    message: str | None = None,
) -> None:
    """Move ``run`` to ``target``: accepted (``running``) or ended, checked and stamped."""
    check_run_transition(RunStatus(run.status), target)
    run.status = target.value
    if target == RunStatus.RUNNING:
        run.accepted_at = now
        run.last_seen_at = now
        return
    run.ended_at = now
    run.error_category = category.value if category else None
    run.message = message
