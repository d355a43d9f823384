"""``MAX_CONCURRENT_TASKS`` holds exactly across replicas: claims from two engines (two
connection pools, as two coordinator processes have) racing on one PostgreSQL never
start more runs than the cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import func, select

from claude_cluster.coordinator.store.common import ACTIVE_RUNS
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import TaskRun
from tests.support import databases
from tests.support.store_rows import add_idle_agents, create_task

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
    await add_idle_agents(a, [f"agent-{i}" for i in range(AGENTS)], max_concurrent_tasks=10)
    for i in range(TASKS):
        await create_task(a, i + 1)

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
