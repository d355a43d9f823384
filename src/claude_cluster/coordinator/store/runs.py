"""Runs after their claim (``claims.py``): the agent's acceptance or a failed push, and
what the agent reports (events, phases, the delivery check, the result), plus what runs
cost. A run is finished once: its end is guarded by the status it leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from claude_cluster.coordinator.store import transitions
from claude_cluster.coordinator.store.common import (
    ACTIVE_RUNS,
    M,
    get_or_raise,
    retry_conflicts,
    utcnow,
)
from claude_cluster.coordinator.store.run_end import RunEnd, RunEndSteps, agent_release
from claude_cluster.coordinator.store.tables import Agent, Task, TaskEvent, TaskRun
from claude_cluster.domain.contract import known_runner
from claude_cluster.domain.retry import RetryPolicy
from claude_cluster.domain.states import (
    AGENT_FAULT_CATEGORIES,
    RUNNING_TASK_STATUSES,
    ErrorCategory,
    RunStatus,
    TaskStatus,
)
from claude_cluster.domain.wire import ROUND_PROGRESS, RunEvent, RunResult
from claude_cluster.errors import Conflict, Forbidden, NotFound


class RunQueries(RunEndSteps):
    # --- the agent's acceptance and reports -----------------------------------------

    @retry_conflicts
    async def mark_accepted(self, run_id: int) -> Task | None:
        """The agent took the run: run ``running``, task ``in_progress``; returns the task
        when this call moved it (``None`` when a report or a sweep got there first)."""
        if self._postgres:  # one statement (transitions.accept_statement)
            async with self._statement() as (conn, changes):
                return await transitions.accept(conn, run_id, utcnow(), changes)
        async with self._tx() as s:
            run = await self._snapshot(s, TaskRun, run_id)
            if run is None or run.status != RunStatus.DISPATCHING.value:
                return None
            return await self._start_running(s, run, utcnow())

    async def _snapshot(self, s: AsyncSession, model: type[M], ident: int | str) -> M | None:
        """The row ``ident`` of ``model`` as a snapshot, locked on PostgreSQL."""
        query = transitions.select_by_key(model, self._postgres)
        row = (await (await s.connection()).execute(query, {"key": ident})).first()
        return None if row is None else transitions.snapshot(model, row)

    async def _start_running(self, s: AsyncSession, run: TaskRun, now: datetime) -> Task | None:
        await transitions.move_run(s, run, RunStatus.RUNNING, now)
        task = await self._snapshot(s, Task, run.task_id)
        if task is not None and task.status == TaskStatus.ASSIGNED.value:
            await transitions.move_task(
                s,
                task,
                TaskStatus.IN_PROGRESS,
                now,
                kind="accepted",
                message=f"run {run.id} accepted by {run.agent_id}",
                run_id=run.id,
            )
            return task
        return None

    @retry_conflicts
    async def dispatch_failed(
        self, run_id: int, reason: str, *, cooldown_seconds: float
    ) -> Task | None:
        """The push failed: the run is lost, the task goes back to ``queued`` at once
        (the agent's fault, not the task's: no retry is counted) and the agent cools down."""
        async with self._tx() as s:
            run = await self._snapshot(s, TaskRun, run_id)
            if run is None or run.status not in ACTIVE_RUNS:
                return None
            now = utcnow()
            task = await self._snapshot(s, Task, run.task_id)  # before the agent
            agent = await self._end_run(
                s,
                run,
                RunStatus.LOST,
                now,
                category=ErrorCategory.DISPATCH_FAILED,
                message=reason,
                cooldown_until=now + timedelta(seconds=cooldown_seconds),
            )
            if task is None or TaskStatus(task.status) not in RUNNING_TASK_STATUSES:
                return task
            await transitions.move_task(
                s,
                task,
                TaskStatus.QUEUED,
                now,
                kind="dispatch_failed",
                message=reason,
                details={"agent_id": agent.id},
                run_id=run.id,
                assigned_agent_id=None,
            )
            return task

    # --- run reports ------------------------------------------------------------------

    async def _run_of_agent(self, s: AsyncSession, run_id: int, agent_id: str) -> TaskRun:
        run = await get_or_raise(s, TaskRun, run_id, "run", with_for_update=self._postgres)
        if run.agent_id != agent_id:
            raise Forbidden(f"run {run_id} belongs to another agent")
        return run

    @retry_conflicts
    async def record_events(
        self, run_id: int, agent_id: str, events: Sequence[RunEvent]
    ) -> tuple[int, list[TaskEvent]]:
        """Store a batch; events already stored (same run and seq) are skipped, so an
        agent may resend a batch whose answer it never saw."""
        for _ in range(3):
            try:
                async with self._tx() as s:
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
                    live = await self._newest_progress(s, run_id, events)
                    for e in events:
                        if e.seq in seen or (e.kind == ROUND_PROGRESS and e.seq != live):
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
                    if run.status in ACTIVE_RUNS:
                        run.last_seen_at = utcnow()
                    await s.flush()
                    return len(stored), stored
            except IntegrityError:
                continue
        raise Conflict(f"events of run {run_id} are being written concurrently; resend")

    async def _newest_progress(
        self, s: AsyncSession, run_id: int, events: Sequence[RunEvent]
    ) -> int | None:
        """The seq of the one ``round_progress`` of the batch to store, if any.

        Only the newest of a run matters (it replaces the earlier ones of its round, and a
        finished round's ``runner_finished`` replaces it), so a run keeps one: the batch's
        newest is stored and the run's older ones are deleted; one older than the run's
        stored one (a resent batch) is not stored again."""
        newest = max((e.seq for e in events if e.kind == ROUND_PROGRESS), default=None)
        if newest is None:
            return None
        of_run = (TaskEvent.run_id == run_id) & (TaskEvent.kind == ROUND_PROGRESS)
        stored = await s.scalar(select(func.max(TaskEvent.seq)).where(of_run))
        if stored is not None and stored >= newest:
            return None
        await s.execute(delete(TaskEvent).where(of_run))
        return newest

    @retry_conflicts
    async def set_phase(self, run_id: int, agent_id: str, phase: str) -> Task:
        async with self._tx() as s:
            run = await self._run_of_agent(s, run_id, agent_id)
            if run.status not in ACTIVE_RUNS:
                raise Conflict(f"run {run_id} is {run.status}")
            now = utcnow()
            if run.status == RunStatus.DISPATCHING.value:
                await self._start_running(s, run, now)
            run.last_seen_at = now
            task = await s.get(Task, run.task_id, with_for_update=self._postgres)
            assert task is not None
            target = TaskStatus(phase)
            if task.status != target.value and TaskStatus(task.status) in RUNNING_TASK_STATUSES:
                await transitions.move_task(
                    s, task, target, now, kind="phase", message=phase, run_id=run.id
                )
            return task

    @retry_conflicts
    async def confirm_delivery(self, run_id: int, agent_id: str) -> tuple[TaskRun, Task]:
        """The fencing check before a delivery, answered from the database: the run is the
        calling agent's, still active, and so the active run of a task that is being worked
        on (one active run per task: the partial unique index). Stamps
        ``delivery_confirmed_at`` and ``last_seen_at``.

        The run id is the fencing token: a lost run is never active again, and a requeued
        task gets a new run with a higher id.

        On PostgreSQL a running run of a task being worked on is stamped by one statement
        (:func:`_confirm_statement`); anything else (a run not yet accepted, a refusal)
        takes one transaction that moves or explains it.

        Raises:
            Conflict: the run may not deliver; the message says why.
            Forbidden: the run is another agent's.
        """
        if self._postgres:  # the usual case in one statement; the transaction says why not
            async with self._statement() as (conn, _):
                params = {"run": run_id, "agent": agent_id, "now": utcnow()}
                row = (await conn.execute(_confirm_statement(), params)).first()
            if row is not None:
                confirmed = transitions.prefixed_snapshot(TaskRun, "run_", row)
                return confirmed, transitions.prefixed_snapshot(Task, "task_", row)
        async with self._tx() as s:
            run = await self._snapshot(s, TaskRun, run_id)
            if run is None:
                raise Conflict(f"run {run_id} is unknown to the coordinator: do not deliver")
            if run.agent_id != agent_id:
                raise Forbidden(f"run {run_id} belongs to another agent")
            if run.status not in ACTIVE_RUNS:
                why = f" ({run.message})" if run.message else ""
                raise Conflict(
                    f"run {run_id} is {run.status}, not active{why}: it no longer holds "
                    f"task {run.task_id}, do not deliver"
                )
            now = utcnow()
            if run.status == RunStatus.DISPATCHING.value:
                await self._start_running(s, run, now)
            task = await self._snapshot(s, Task, run.task_id)
            assert task is not None
            if TaskStatus(task.status) not in RUNNING_TASK_STATUSES:
                raise Conflict(f"task {task.id} is {task.status}: run {run_id} may not deliver")
            stamps = {"delivery_confirmed_at": now, "last_seen_at": now}
            await (await s.connection()).execute(
                update(TaskRun).where(TaskRun.id == run.id).values(stamps)
            )
            run.delivery_confirmed_at = run.last_seen_at = now
            return run, task

    @retry_conflicts
    async def finish_run(
        self,
        run_id: int,
        agent_id: str,
        result: RunResult,
        policy: RetryPolicy,
        *,
        cooldown_seconds: float = 15.0,
    ) -> RunEnd:
        """Record a run's result and move its task. Finishing twice is a no-op. A failure
        for a reason of the agent (:data:`AGENT_FAULT_CATEGORIES`) requeues the task without
        counting a retry and counts against the agent (``cooldown_seconds``, its fault streak).

        On PostgreSQL a success of a running run is one statement (:meth:`_succeed`).
        Anything else: Core statements on locked snapshots: the run (with its figures), the
        agent's slot and statistics, the task, and the event, one statement each."""
        if self._postgres and result.succeeded:
            ended = await self._succeed(run_id, agent_id, result)
            if ended is not None:
                return ended
        async with self._tx() as s:
            run = await self._snapshot(s, TaskRun, run_id)
            if run is None:
                raise NotFound(kind="run", id=run_id)
            if run.agent_id != agent_id:
                raise Forbidden(f"run {run_id} belongs to another agent")
            if run.status not in ACTIVE_RUNS:
                task = await self._snapshot(s, Task, run.task_id)
                assert task is not None
                return RunEnd(task=task, run=run, already_finished=True)
            now = utcnow()
            if run.status == RunStatus.DISPATCHING.value:
                # the agent reports before its answer to the push was recorded: it took the run
                await self._start_running(s, run, now)
            task = await self._snapshot(s, Task, run.task_id)
            assert task is not None
            figures = {name: getattr(result, name) for name in RUN_FIGURES}
            changes: dict[str, Any] = {"cost_usd": (task.cost_usd or 0.0) + result.cost_usd}
            if result.session_id:
                changes["session_id"] = result.session_id
            if result.branch:
                changes["github_branch"] = result.branch
            if result.succeeded:
                await self._end_run(
                    s,
                    run,
                    RunStatus.SUCCEEDED,
                    now,
                    message=result.message,
                    figures=figures,
                    fault=False,
                )
                changes.update(feedback=None, result_data=_result_data(result), error_message=None)
                target = TaskStatus.COMPLETED
                if result.pr_url:
                    changes.update(github_pr_number=result.pr_number, github_pr_url=result.pr_url)
                    target = TaskStatus.REVIEW
                message = result.message or "run succeeded"
                if TaskStatus(task.status) in RUNNING_TASK_STATUSES:
                    await transitions.move_task(
                        s,
                        task,
                        target,
                        now,
                        kind="run_succeeded",
                        message=message,
                        details=_result_data(result),
                        run_id=run.id,
                        **changes,
                    )
                else:
                    await self._change_task(s, task, changes)
                    self._event(
                        s, task.id, "run_succeeded", message, _result_data(result), run_id=run.id
                    )
                return RunEnd(task=task, run=run)
            category = result.error_category or ErrorCategory.EXECUTION_ERROR
            if category == ErrorCategory.CANCELLED:
                await self._end_run(
                    s,
                    run,
                    RunStatus.CANCELLED,
                    now,
                    category=category,
                    message=result.message,
                    figures=figures,
                )
                await self._change_task(s, task, changes)
                return RunEnd(task=task, run=run)
            needed = known_runner(result.needs_runner)
            if category == ErrorCategory.CONTRACT_ERROR and needed is not None:
                agent = await self._snapshot(s, Agent, run.agent_id)  # after the task
                assert agent is not None
                # an agent that offers the runner and still refuses it is not routed
                # around: its run fails as any contract_error (no requeue loop)
                if needed not in (agent.runners or ()):
                    await self._runner_missing(
                        s, task, run, agent, needed, result.message, figures, changes, now
                    )
                    return RunEnd(task=task, run=run, retried=True)
            if category in AGENT_FAULT_CATEGORIES:
                await self._agent_fault(
                    s, task, run, category, result.message, figures, changes, now, cooldown_seconds
                )
                return RunEnd(task=task, run=run, retried=True)
            await self._end_run(
                s,
                run,
                RunStatus.FAILED,
                now,
                category=category,
                message=result.message,
                figures=figures,
            )
            decision = await self._after_failure(
                s,
                task,
                run,
                category,
                result.message,
                result.retry_after_seconds,
                policy,
                now,
                changes,
            )
            return RunEnd(
                task=task, run=run, retried=decision.retry, delay_seconds=decision.delay_seconds
            )

    async def _succeed(self, run_id: int, agent_id: str, result: RunResult) -> RunEnd | None:
        """The agent's ``running`` run ``run_id`` succeeded: one statement
        (:func:`transitions.succeed_statement`) with what the transaction below would write;
        ``None`` when the run is not in that state (the transaction then decides)."""
        target = TaskStatus.REVIEW if result.pr_url else TaskStatus.COMPLETED
        task_values: dict[str, Any] = {
            "feedback": None,
            "result_data": _result_data(result),
            "error_message": None,
        }
        if result.session_id:
            task_values["session_id"] = result.session_id
        if result.branch:
            task_values["github_branch"] = result.branch
        if result.pr_url:
            task_values.update(github_pr_number=result.pr_number, github_pr_url=result.pr_url)
        statement = transitions.succeed_statement(
            target, RUN_FIGURES, tuple(task_values), _released_on_success
        )
        now = utcnow()
        params = {
            "run": run_id,
            "agent": agent_id,
            "now": now,
            "cost": result.cost_usd,
            "run_message": result.message,
            "event_message": result.message or "run succeeded",
            "event_details": task_values["result_data"],
            **{f"r_{name}": getattr(result, name) for name in RUN_FIGURES},
            **{f"t_{name}": value for name, value in task_values.items()},
        }
        async with self._statement() as (conn, changes):
            row = (await conn.execute(statement, params)).first()
            if row is None:
                return None
            task = transitions.prefixed_snapshot(Task, "task_", row)
            if task.status != row.previous:
                changes.append(
                    transitions.StatusChange(task.id, row.previous, task.status, task.priority)
                )
        return RunEnd(task=task, run=transitions.prefixed_snapshot(TaskRun, "run_", row))

    async def _agent_fault(
        self,
        s: AsyncSession,
        task: Task,
        run: TaskRun,
        category: ErrorCategory,
        message: str,
        figures: dict[str, Any],
        changes: dict[str, Any],
        now: datetime,
        cooldown_seconds: float,
    ) -> None:
        """The run failed for a reason of its agent, not of its task: like a failed push,
        the task goes back to ``queued`` at once without counting a retry, and the agent
        cools down and adds to its fault streak (at :data:`AGENT_FAULT_LIMIT` it is not
        ready: no more work until it or an operator clears it)."""
        agent = await self._end_run(
            s,
            run,
            RunStatus.FAILED,
            now,
            category=category,
            message=message,
            figures=figures,
            cooldown_until=now + timedelta(seconds=cooldown_seconds),
            fault=True,
        )
        if TaskStatus(task.status) not in RUNNING_TASK_STATUSES:
            await self._change_task(s, task, changes)
            return
        blocked = f"; agent {agent.id} is not ready" if agent.not_ready_reason else ""
        await transitions.move_task(
            s,
            task,
            TaskStatus.QUEUED,
            now,
            kind="agent_fault",
            message=f"run {run.id} {category.value} on agent {agent.id}: {message}; "
            f"the agent's fault, not the task's: requeued without counting a retry{blocked}",
            details={
                "category": category.value,
                "agent_id": agent.id,
                "fault_streak": agent.fault_streak,
            },
            run_id=run.id,
            level="warning",
            **{**changes, "assigned_agent_id": None},
        )

    async def _runner_missing(
        self,
        s: AsyncSession,
        task: Task,
        run: TaskRun,
        agent: Agent,
        runner: str,
        message: str,
        figures: dict[str, Any],
        changes: dict[str, Any],
        now: datetime,
    ) -> None:
        """The task's contract names a runner its agent does not offer: neither the task's
        fault nor the agent's. The run fails (not counted in the agent's statistics), the
        task records the runner it needs and goes back to ``queued`` at once without
        counting a retry, for an agent that offers it (SPEC §4b)."""
        await self._end_run(
            s,
            run,
            RunStatus.FAILED,
            now,
            category=ErrorCategory.CONTRACT_ERROR,
            message=message,
            figures=figures,
            tally=False,
        )
        changes = {**changes, "required_runner": runner}
        if TaskStatus(task.status) not in RUNNING_TASK_STATUSES:
            await self._change_task(s, task, changes)
            return
        await transitions.move_task(
            s,
            task,
            TaskStatus.QUEUED,
            now,
            kind="runner_required",
            message=f"run {run.id}: agent {agent.id} cannot run {runner}, which the task's "
            f"contract names; requeued without counting a retry, for an agent that offers "
            f"{runner}",
            details={"runner": runner, "agent_id": agent.id, "offered": agent.runners},
            run_id=run.id,
            level="warning",
            **{**changes, "assigned_agent_id": None, "not_before": None},
        )

    # --- cost -------------------------------------------------------------------------

    async def repository_cost_since(self, repository: str, since: datetime) -> float:
        """Dollars reported by the runs of ``repository`` that ended since ``since``."""
        async with self._sessions() as s:
            total = await s.scalar(
                select(func.coalesce(func.sum(TaskRun.cost_usd), 0.0))
                .join(Task, Task.id == TaskRun.task_id)
                .where(Task.github_repository == repository, TaskRun.ended_at >= since)
            )
            return float(total or 0.0)


def _released_on_success(
    duration: ColumnElement[float], now: ColumnElement[datetime]
) -> dict[str, Any]:
    return agent_release(RunStatus.SUCCEEDED, now, duration=duration, fault=False)


#: what a run's result reports, stored on the run as it is
RUN_FIGURES = (
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
)


@functools.cache
def _confirm_statement() -> Select[Any]:
    """Stamp ``delivery_confirmed_at`` and ``last_seen_at`` of the ``running`` run ``run``
    of agent ``agent`` whose task is being worked on, in one PostgreSQL statement;
    returns the run's and the task's columns (prefixed ``run_`` and ``task_``), no row when
    the run may not deliver or is not accepted yet. A change that ends the run (cancel,
    requeue, a sweep) locks the run first, so the guard is checked after it committed.
    Parameters: ``run``, ``agent``, ``now``."""
    now = bindparam("now", type_=TaskRun.__table__.c.last_seen_at.type)
    worked_on = (
        select(Task.id)
        .where(Task.id == TaskRun.task_id, Task.status.in_(transitions.WORKED_ON))
        .exists()
    )
    run = (
        update(TaskRun)
        .where(
            # (parameters named after no column: an UPDATE would also SET those)
            TaskRun.id == bindparam("run"),
            TaskRun.agent_id == bindparam("agent"),
            TaskRun.status == RunStatus.RUNNING.value,
            worked_on,
        )
        .values(delivery_confirmed_at=now, last_seen_at=now)
        .returning(*transitions.row_columns(TaskRun))
        .cte("confirmed_run")
    )
    return select(
        *transitions.prefixed(run.c, "run_"), *transitions.prefixed(Task.__table__.c, "task_")
    ).join_from(run, Task.__table__, Task.id == run.c.task_id)


def _result_data(result: RunResult) -> dict[str, Any]:
    return result.model_dump(mode="json", exclude={"log_excerpt", "message"})
