"""A claim with nothing ready costs one statement on PostgreSQL: the probe before the
claim's transaction (no BEGIN, no advisory lock). On both backends a ready task is still
claimed, and a task in its back-off is not (unless assigned by hand)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update

from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import Agent, Task
from claude_cluster.coordinator.store.tasks import NewTask
from claude_cluster.domain.states import Priority

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[tuple[Repository, list[str]]]:
    """The store and the SQL it sends (each statement, BEGIN and COMMIT included)."""
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
        now = utcnow()
        async with repo._sessions.begin() as s:
            s.add(
                Agent(
                    id="a1",
                    name="a1",
                    url="http://127.0.0.1:9",
                    registered_at=now,
                    last_heartbeat=now,
                    token_hash="x",
                    status="idle",
                    max_concurrent_tasks=2,
                    specialties=["general"],
                )
            )
        yield repo, sent
    finally:
        await engine.dispose()


async def create(repo: Repository, issue: int) -> Task:
    task, created = await repo.create_task(
        NewTask(
            title=f"T{issue}",
            description="",
            github_repository="acme/app",
            github_issue_number=issue,
            repository_url="https://example.invalid/acme/app.git",
            priority=Priority.MEDIUM,
            requirements=[],
            labels=[],
            complexity="simple",
            estimated_duration_minutes=5,
        )
    )
    assert created
    return task


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
    task = await create(repo, 1)
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
    first, second = await create(repo, 1), await create(repo, 2)
    claims = await repo.claim(max_active=10)
    assert sorted(c.task.id for c in claims) == [first.id, second.id]
    assert await repo.claim(max_active=10) == []  # the queue is empty again
