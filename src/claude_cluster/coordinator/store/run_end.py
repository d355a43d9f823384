"""How a run ends: the steps every ending shares (the run's status, the agent's slot and
statistics, the task's retry or failure) and :class:`RunEnd`, what the ending left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, update
from sqlalchemy.ext.asyncio import AsyncSession

from claude_cluster.coordinator.store import transitions
from claude_cluster.coordinator.store.common import ONLINE_AGENTS, StoreBase
from claude_cluster.coordinator.store.feedback import deferred_feedback
from claude_cluster.coordinator.store.tables import Agent, Task, TaskRun
from claude_cluster.domain import retry
from claude_cluster.domain.retry import RetryPolicy
from claude_cluster.domain.states import (
    AGENT_FAULT_LIMIT,
    RUNNING_TASK_STATUSES,
    AgentStatus,
    ErrorCategory,
    RunStatus,
    TaskStatus,
)


def fault_reason(agent_id: str, category: ErrorCategory | None, message: str | None) -> str:
    """Why an agent whose runs failed for its own reasons gets no more work."""
    last = f"{category.value if category else 'failed'}: {(message or '').strip()[:500]}"
    return (
        f"{AGENT_FAULT_LIMIT} runs in a row failed for a reason of this agent (the last "
        f"{last}); fix the host, then restart the agent or run `claude-cluster agents "
        f"ready {agent_id}`"
    )


def agent_release(
    status: RunStatus,
    now: datetime | ColumnElement[datetime],
    *,
    duration: float | ColumnElement[float],
    cooldown_until: datetime | None = None,
    fault: bool | None = None,
    tally: bool = True,
    fault_text: str = "",
) -> dict[str, Any]:
    """The ``UPDATE`` values of an agent whose run ended with ``status``: its slot back,
    its statistics (``duration`` in seconds, a number or an expression), and its fault
    streak (see :meth:`RunEndSteps._end_run`; ``fault_text``: why it is no longer ready)."""
    active = case((Agent.active_task_count > 0, Agent.active_task_count - 1), else_=0)
    values: dict[str, Any] = {
        "active_task_count": active,
        # idle/busy/overloaded follow the load; offline, maintenance and error stay
        "status": case(
            (
                Agent.status.in_(ONLINE_AGENTS),
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
        values["total_tasks_completed"] = Agent.total_tasks_completed + 1
        values["last_task_completed_at"] = now
        values["average_task_duration"] = Agent.average_task_duration + (
            duration - Agent.average_task_duration
        ) / (Agent.total_tasks_completed + 1)
    elif status in (RunStatus.FAILED, RunStatus.LOST) and tally:
        values["total_tasks_failed"] = Agent.total_tasks_failed + 1
    if cooldown_until is not None:
        values["dispatch_failures"] = Agent.dispatch_failures + 1
        values["cooldown_until"] = cooldown_until
    if fault is True:
        values["fault_streak"] = Agent.fault_streak + 1
        values["not_ready_reason"] = case(
            (Agent.fault_streak + 1 >= AGENT_FAULT_LIMIT, fault_text),
            else_=Agent.not_ready_reason,
        )
    elif fault is False:
        values["fault_streak"] = 0
        values["not_ready_reason"] = case(
            (Agent.fault_streak >= AGENT_FAULT_LIMIT, None), else_=Agent.not_ready_reason
        )
    return values


@dataclass(frozen=True)
class RunEnd:
    """How finishing a run left its task (for metrics, comments and wake-ups)."""

    task: Task
    run: TaskRun
    already_finished: bool = False
    retried: bool = False
    delay_seconds: float = 0.0


class RunEndSteps(StoreBase):
    """The run-ending steps shared by cancels, reports, leases and re-registrations."""

    async def _end_run(
        self,
        s: AsyncSession,
        run: TaskRun,
        status: RunStatus,
        now: datetime,
        *,
        category: ErrorCategory | None = None,
        message: str | None = None,
        figures: dict[str, Any] | None = None,
        cooldown_until: datetime | None = None,
        fault: bool | None = None,
        tally: bool = True,
    ) -> Agent:
        """End a run (with the figures it reported) and give its agent slot back, with the
        agent's statistics; ``cooldown_until`` also counts a failed push against the agent.
        ``fault`` True adds to the agent's fault streak (at :data:`AGENT_FAULT_LIMIT` the
        agent is not ready), False (a success) ends the streak and a block it caused.
        ``tally`` False leaves a failure out of the agent's statistics (a run it could not
        take, by no fault of its own: a runner it does not offer).

        One ``UPDATE … RETURNING`` on the agent row: the hottest rows of the schema are
        locked for as short a time as a statement allows."""
        await transitions.move_run(
            s, run, status, now, category=category, message=message, **(figures or {})
        )
        values = agent_release(
            status,
            now,
            duration=(now - run.started_at).total_seconds(),
            cooldown_until=cooldown_until,
            fault=fault,
            tally=tally,
            fault_text=fault_reason(run.agent_id, category, message),
        )
        conn = await transitions.connection(s)
        row = (
            await conn.execute(
                update(Agent)
                .where(Agent.id == run.agent_id)
                .values(**values)
                .returning(*transitions.row_columns(Agent))
            )
        ).one()
        return transitions.snapshot(Agent, row)

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
        # the task before the agent row that _end_run updates: lock order run → task → agent
        task = await s.get(Task, run.task_id, with_for_update=self._postgres)
        assert task is not None
        await self._end_run(s, run, status, now, category=category, message=message)
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
        changes: dict[str, Any] | None = None,
    ) -> retry.RetryDecision:
        """Requeue with back-off or fail the task; the retry counter always increments.
        ``changes`` are other columns of the task written with the move (the run's cost)."""
        changes = dict(changes or {})
        if TaskStatus(task.status) not in RUNNING_TASK_STATUSES:
            await self._change_task(s, task, changes)
            return retry.RetryDecision(False, reason=f"task is {task.status}")
        decision = policy.decide(category, retries_so_far=task.retry_count, retry_after=retry_after)
        changes["assigned_agent_id"] = None
        if not decision.retry and task.feedback and task.github_pr_number:
            await self._follow_up_failed(s, task, run, category, message, now, changes)
            return decision
        if decision.retry:
            ready = now + timedelta(seconds=decision.delay_seconds)
            changes.update(retry_count=task.retry_count + 1, not_before=ready)
            await transitions.move_task(
                s,
                task,
                TaskStatus.QUEUED,
                now,
                kind="retry_scheduled",
                message=f"run {run.id} {category.value}: {message}; retry {task.retry_count} in "
                f"{decision.delay_seconds:.0f} s",
                details={"category": category.value},
                run_id=run.id,
                queued_at=ready,
                **changes,
            )
        else:
            error = f"{category.value}: {message}" if message else category.value
            await transitions.move_task(
                s,
                task,
                TaskStatus.FAILED,
                now,
                kind="failed",
                message=error,
                error_message=error,
                **changes,
                details={"category": category.value, "reason": decision.reason},
                run_id=run.id,
                level="error",
            )
        return decision

    async def _follow_up_failed(
        self,
        s: AsyncSession,
        task: Task,
        run: TaskRun,
        category: ErrorCategory,
        message: str,
        now: datetime,
        changes: dict[str, Any],
    ) -> None:
        """A follow-up run (review feedback on an open pull request) failed for good. The
        pull request still stands, so the task goes back to ``review``, not ``failed``, and
        the feedback it worked on is kept for the next follow-up. Feedback that came in
        during the run starts that follow-up now, carrying both; without new feedback none
        starts by itself (it would fail the same way)."""
        error = f"{category.value}: {message}" if message else category.value
        unfinished = task.feedback or ""
        held = await deferred_feedback(s, task.id)
        details = {"category": category.value, "follow_up": True}
        if held:
            await transitions.move_task(
                s,
                task,
                TaskStatus.QUEUED,
                now,
                kind="feedback",  # takes the held feedback (see deferred_feedback)
                message=f"follow-up run {run.id} failed ({error}); a follow-up with its "
                "feedback and the feedback that came meanwhile is queued",
                details=details,
                run_id=run.id,
                **{**changes, "feedback": "\n\n".join([unfinished, *held]), "not_before": None},
            )
            return
        await transitions.move_task(
            s,
            task,
            TaskStatus.REVIEW,
            now,
            kind="follow_up_failed",
            message=f"follow-up run {run.id} failed ({error}); the pull request stays as it "
            "was, and the next feedback starts a follow-up that carries this one too",
            details=details,
            run_id=run.id,
            level="warning",
            **{**changes, "feedback": None},
        )
        if unfinished:
            self._event(
                s,
                task.id,
                "feedback_deferred",
                "feedback of the failed follow-up, kept for the next one",
                {"feedback": unfinished},
            )

    @staticmethod
    async def _change_task(s: AsyncSession, task: Task, changes: dict[str, Any]) -> None:
        """Write columns of a task other than its status (a snapshot or a tracked row)."""
        await transitions.change_task(s, task, changes)
