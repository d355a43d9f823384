"""The hot path's one-statement forms on PostgreSQL, against the same behaviour on SQLite.

A claim with nothing ready costs one statement on PostgreSQL (the probe before the claim's
transaction: no BEGIN, no advisory lock); a ready task is still claimed, and a task in its
back-off is not (unless assigned by hand). A claim's writes are one statement there
(``transitions.assign_statement``) and write what SQLite's steps write. A run's success writes
the same on both backends (PostgreSQL: ``transitions.succeed_statement``): the run's
figures, the task's move and columns, the agent's slot and statistics, the event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update

from claude_cluster.coordinator.agent_client import AgentClient
from claude_cluster.coordinator.dispatcher import Dispatcher
from claude_cluster.coordinator.store import claims
from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import Agent, Task, TaskEvent, TaskRun
from claude_cluster.domain.retry import RetryPolicy
from claude_cluster.domain.wire import RunResult
from claude_cluster.errors import Forbidden
from tests.support.store_rows import add_idle_agents, create_task
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[tuple[Repository, list[str]]]:
    """The store with one idle agent ``a1`` (2 slots, one fault in its streak), and the SQL
    it sends (each statement, BEGIN and COMMIT included)."""
    engine = create_engine(db_url)
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    def begin(conn: Any) -> None:  # (an autocommit connection sends no BEGIN)
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            sent.append("BEGIN")

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    event.listen(engine.sync_engine, "begin", begin)
    try:
        repo = Repository(sessionmaker(engine), postgres=db_url.startswith("postgresql"))
        await add_idle_agents(repo, ["a1"], max_concurrent_tasks=2, fault_streak=1)
        yield repo, sent
    finally:
        await engine.dispose()


async def test_an_empty_queue_costs_one_statement(store: tuple[Repository, list[str]]) -> None:
    repo, sent = store
    sent.clear()
    assert await repo.claim(max_active=10) == []
    if repo._postgres:
        assert len(sent) == 1 and "EXISTS" in sent[0], sent


async def test_a_task_in_its_back_off_is_not_ready_until_it_ends(
    store: tuple[Repository, list[str]],
) -> None:
    repo, sent = store
    task = await create_task(repo, 1)
    async with repo._sessions.begin() as s:
        await s.execute(
            update(Task)
            .where(Task.id == task.id)
            .values(not_before=utcnow() + timedelta(minutes=5))
        )
    sent.clear()
    assert await repo.claim(max_active=10) == []
    if repo._postgres:
        assert len(sent) == 1, sent
    # a manual assignment overrides the back-off: the probe asks for that task only
    (claim,) = await repo.claim(max_active=10, only_task=task.id)
    assert claim.task.id == task.id and claim.agent.id == "a1"


async def test_a_ready_task_is_claimed(store: tuple[Repository, list[str]]) -> None:
    repo, _ = store
    first, second = await create_task(repo, 1), await create_task(repo, 2)
    claimed = await repo.claim(max_active=10)
    assert sorted(c.task.id for c in claimed) == [first.id, second.id]
    assert await repo.claim(max_active=10) == []  # the queue is empty again


async def running_run(repo: Repository, issue: int) -> int:
    """A task of ``issue``, claimed and accepted: its run id."""
    await create_task(repo, issue)
    (claim,) = await repo.claim(max_active=10)
    await repo.mark_accepted(claim.run.id)
    return int(claim.run.id)


async def agent_row(repo: Repository) -> Any:
    async with repo._sessions() as s:
        return (await s.execute(select(Agent).where(Agent.id == "a1"))).scalar_one()


async def test_a_success_with_a_pull_request_moves_the_task_to_review(
    store: tuple[Repository, list[str]],
) -> None:
    repo, sent = store
    run_id = await running_run(repo, 1)
    sent.clear()
    result = RunResult(
        succeeded=True,
        message="fixed it",
        cost_usd=0.25,
        input_tokens=1000,
        num_turns=3,
        session_id="sess-1",
        branch="claude/issue-1",
        commit_sha="abc123",
        pr_number=7,
        pr_url="https://github.com/acme/app/pull/7",
        tests_command="pytest",
        tests_passed=5,
        tests_failed=0,
        tests_ok=True,
        changed_files=["app.py"],
    )
    end = await repo.finish_run(run_id, "a1", result, RetryPolicy())
    if repo._postgres:
        assert len(sent) == 1 and "succeeded_run" in sent[0], sent
    task = await repo.get_task(end.task.id)
    assert (task.status, task.github_pr_number, task.github_pr_url) == (
        "review",
        7,
        "https://github.com/acme/app/pull/7",
    )
    assert (task.cost_usd, task.session_id, task.github_branch) == (
        0.25,
        "sess-1",
        "claude/issue-1",
    )
    assert task.result_data["tests_passed"] == 5 and task.completed_at is None
    assert (end.task.status, end.run.status, end.run.id) == ("review", "succeeded", run_id)
    async with repo._sessions() as s:
        run = (await s.execute(select(TaskRun).where(TaskRun.id == run_id))).scalar_one()
        events = (await s.scalars(select(TaskEvent).where(TaskEvent.task_id == task.id))).all()
    assert (run.status, run.message, run.cost_usd, run.num_turns) == (
        "succeeded",
        "fixed it",
        0.25,
        3,
    )
    assert (run.commit_sha, run.changed_files, run.ended_at is not None) == (
        "abc123",
        ["app.py"],
        True,
    )
    (succeeded,) = [e for e in events if e.kind == "run_succeeded"]
    assert (succeeded.message, succeeded.run_id) == ("fixed it", run_id)
    assert succeeded.details["pr_url"] == "https://github.com/acme/app/pull/7"
    agent = await agent_row(repo)
    assert (agent.status, agent.active_task_count, agent.total_tasks_completed) == ("idle", 0, 1)
    assert (agent.fault_streak, agent.average_task_duration >= 0) == (0, True)


async def test_a_second_success_adds_up_and_stamps_its_own_time(
    store: tuple[Repository, list[str]],
) -> None:
    repo, _ = store
    first = await running_run(repo, 1)
    await repo.finish_run(first, "a1", RunResult(succeeded=True, cost_usd=0.5), RetryPolicy())
    stamped: datetime = (await agent_row(repo)).last_task_completed_at
    await asyncio.sleep(0.05)
    second = await running_run(repo, 2)
    end = await repo.finish_run(second, "a1", RunResult(succeeded=True), RetryPolicy())
    agent = await agent_row(repo)
    assert agent.total_tasks_completed == 2
    assert agent.last_task_completed_at > stamped  # the statement's time, not its build's
    task = await repo.get_task(end.task.id)
    assert (task.status, task.completed_at is not None, task.cost_usd) == ("completed", True, 0.0)
    events = [e["kind"] for e in await repo_events(repo, task.id)]
    assert events[-1] == "run_succeeded"
    # finishing twice changes nothing
    again = await repo.finish_run(second, "a1", RunResult(succeeded=True), RetryPolicy())
    assert again.already_finished
    assert (await agent_row(repo)).total_tasks_completed == 2


async def repo_events(repo: Repository, task_id: int) -> list[dict[str, Any]]:
    async with repo._sessions() as s:
        rows = (
            await s.scalars(
                select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
            )
        ).all()
    return [{"kind": e.kind, "message": e.message} for e in rows]


async def test_create_and_the_delivery_check_are_one_statement_each(
    store: tuple[Repository, list[str]],
) -> None:
    repo, sent = store
    sent.clear()
    task = await create_task(repo, 1)
    if repo._postgres:
        assert len(sent) == 1 and "new_task" in sent[0], sent
    (claim,) = await repo.claim(max_active=10)
    await repo.mark_accepted(claim.run.id)
    sent.clear()
    run, checked = await repo.confirm_delivery(claim.run.id, "a1")
    if repo._postgres:
        assert len(sent) == 1 and "confirmed_run" in sent[0], sent
    assert (run.id, checked.id, run.delivery_confirmed_at is not None) == (
        claim.run.id,
        task.id,
        True,
    )
    # another agent's check is refused, by the transaction that says why
    with pytest.raises(Forbidden, match="belongs to another agent"):
        await repo.confirm_delivery(claim.run.id, "a2")


async def test_a_claim_writes_the_same_on_both_backends(
    store: tuple[Repository, list[str]],
) -> None:
    repo, sent = store
    first, second = await create_task(repo, 1), await create_task(repo, 2)
    sent.clear()
    claimed = await repo.claim(max_active=10)
    if repo._postgres:  # the probe, then BEGIN, lock, agents, tasks, the writes (and COMMIT)
        assert len(sent) == 6 and "new_runs" in sent[-1], sent
    assert [(c.task.id, c.task.status, c.run.attempt) for c in claimed] == [
        (first.id, "assigned", 1),
        (second.id, "assigned", 1),
    ]
    assert {(c.agent.active_task_count, c.agent.status) for c in claimed} == {(2, "overloaded")}
    async with repo._sessions() as s:
        runs = (await s.execute(select(TaskRun).order_by(TaskRun.id))).scalars().all()
        tasks = (await s.execute(select(Task).order_by(Task.id))).scalars().all()
        events = (
            (await s.execute(select(TaskEvent).where(TaskEvent.kind == "assigned"))).scalars().all()
        )
    assert [(r.id, r.task_id, r.agent_id, r.status, r.kind) for r in runs] == [
        (claimed[0].run.id, first.id, "a1", "dispatching", "initial"),
        (claimed[1].run.id, second.id, "a1", "dispatching", "initial"),
    ]
    for run in runs:
        assert (run.cost_usd, run.num_turns, run.fix_rounds, run.changed_files) == (0.0, 0, 0, [])
        assert run.started_at == run.last_seen_at and run.accepted_at is None
    for task in tasks:
        assert (task.status, task.attempts, task.assigned_agent_id) == ("assigned", 1, "a1")
        assert task.assigned_at == task.updated_at == runs[0].started_at
    assert sorted((e.task_id, e.run_id, e.message, e.details) for e in events) == [
        (r.task_id, r.id, f"run {r.id} (attempt 1) to a1", {"run_id": r.id, "agent_id": "a1"})
        for r in runs
    ]
    assert (await agent_row(repo)).active_task_count == 2


async def test_an_agent_filled_since_it_was_read_takes_no_task(
    store: tuple[Repository, list[str]],
) -> None:
    """Another replica took the agent's slots between the claim's read and its writes:
    the conditional update takes none, no run is written and the task stays queued."""
    repo, _ = store
    task = await create_task(repo, 1)
    stale = await agent_row(repo)
    async with repo._sessions.begin() as s:
        await s.execute(update(Agent).where(Agent.id == "a1").values(active_task_count=2))
    async with repo._tx() as s:
        conn = await s.connection()
        write = claims._assign if repo._postgres else repo._assign_in_steps
        assert await write(s, conn, [(task, stale)], utcnow()) == []
    async with repo._sessions() as s:
        assert (await s.execute(select(TaskRun))).first() is None
        assert (await s.get(Task, task.id)).status == "queued"


async def test_a_pass_woken_by_a_new_task_claims_without_the_probe(
    store: tuple[Repository, list[str]],
) -> None:
    """The service wakes the dispatcher with ``task_ready`` after queueing a task: the
    pass's first claim goes straight to its transaction. Any other wake-up probes first."""
    repo, sent = store
    if not repo._postgres:
        pytest.skip("SQLite claims have no probe")
    client = AgentClient(timeout=1)  # a1 listens nowhere: the push fails, a1 cools down
    dispatcher = Dispatcher(
        repo,
        client,
        max_concurrent_tasks=10,
        sweep_interval=60,
        task_timeout=60,
        cooldown_seconds=60,
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(dispatcher.run(stop))

    async def claimed() -> bool:
        return any("new_runs" in statement for statement in sent)

    try:
        await create_task(repo, 1)
        sent.clear()
        dispatcher.wake(task_ready=True)
        await eventually(claimed)
        assert sent[0] == "BEGIN", sent[:3]
        await dispatcher.settle()  # the failed push is handed back
        await create_task(repo, 2)
        sent.clear()
        dispatcher.wake()
        await eventually(lambda: asyncio.sleep(0, result=bool(sent)))
        assert "EXISTS" in sent[0], sent[:3]
    finally:
        stop.set()
        dispatcher.wake()
        await loop
        await client.close()
