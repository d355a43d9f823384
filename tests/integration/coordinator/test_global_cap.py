"""``MAX_CONCURRENT_TASKS`` holds exactly across replicas: claims from two engines (two
connection pools, as two coordinator processes have) racing on one PostgreSQL never
start more runs than the cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import func, select

from claude_cluster.coordinator.store.common import ACTIVE_RUNS, utcnow
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import Agent, TaskRun
from claude_cluster.coordinator.store.tasks import NewTask
from claude_cluster.domain.states import Priority
from tests.support import databases

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

CAP = 5
AGENTS = 8
TASKS = 60


@pytest.fixture
def pg_url(_pg_template: None) -> Iterator[str]:
    name, url = databases.new_pg_database()
    try:
        yield url
    finally:
        databases.drop_pg_database(name)


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[list[Repository]]:
    engines = [create_engine(pg_url), create_engine(pg_url)]
    try:
        yield [Repository(sessionmaker(e), postgres=True) for e in engines]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_concurrent_claims_of_two_replicas_never_pass_the_cap(
    replicas: list[Repository],
) -> None:
    a, b = replicas
    now = utcnow()
    async with a._sessions.begin() as s:
        for i in range(AGENTS):
            s.add(
                Agent(
                    id=f"agent-{i}",
                    name=f"agent-{i}",
                    url="http://127.0.0.1:9",
                    registered_at=now,
                    last_heartbeat=now,
                    token_hash="x",
                    status="idle",
                    max_concurrent_tasks=10,
                    specialties=["general"],
                )
            )
    for i in range(TASKS):
        await a.create_task(
            NewTask(
                title=f"T{i}",
                description="",
                github_repository="acme/app",
                github_issue_number=i + 1,
                repository_url="https://example.invalid/acme/app.git",
                priority=Priority.MEDIUM,
                requirements=[],
                labels=[],
                complexity="simple",
                estimated_duration_minutes=5,
            )
        )

    async def claimer(repo: Repository) -> int:
        claimed = 0
        for _ in range(10):
            claimed += len(await repo.claim(max_active=CAP, batch=16))
        return claimed

    counts = await asyncio.gather(*(claimer(repo) for repo in (a, b) for _ in range(4)))
    async with b._sessions() as s:
        active = await s.scalar(
            select(func.count()).select_from(TaskRun).where(TaskRun.status.in_(ACTIVE_RUNS))
        )
    assert sum(counts) == active == CAP
