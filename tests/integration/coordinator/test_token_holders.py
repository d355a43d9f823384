"""Who holds a token, as another replica sees it: an agent's token is trusted for
AGENT_TOKEN_TTL seconds after it was looked up, then asked for again; an API token is
asked for every time, so its revocation takes effect at once.

A real coordinator (SQLite and PostgreSQL) makes the changes over HTTP; a second
``TokenHolders`` on the same database, with a clock the test moves, is the other replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from claude_cluster.coordinator.service import hash_token
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.token_holders import AGENT_TOKEN_TTL, TokenHolders
from tests.conftest import RunningCoordinator
from tests.integration.coordinator.test_agents_api import register

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def other_replica(db_url: str) -> AsyncIterator[Repository]:
    engine = create_engine(db_url)
    try:
        yield Repository(sessionmaker(engine), postgres=engine.dialect.name == "postgresql")
    finally:
        await engine.dispose()


async def test_a_reset_agent_token_is_refused_elsewhere_within_the_ttl(
    coordinator: RunningCoordinator, other_replica: Repository
) -> None:
    token = register(coordinator, "a1").json()["token"]
    clock = Clock()
    holders = TokenHolders(other_replica, clock=clock)
    assert await holders.holder(hash_token(token)) == ("agent", "a1")
    assert await holders.holder(hash_token("not-a-token")) is None

    with coordinator.client() as admin:
        assert admin.post("/api/v1/agents/a1/reset").status_code == 200
    with coordinator.client(token) as old:  # the replica that reset it: refused at once
        assert old.get("/api/v1/agents/a1").status_code == 401

    # the other replica looked it up a moment ago: trusted until the TTL runs out ...
    clock.now += AGENT_TOKEN_TTL - 0.5
    assert await holders.holder(hash_token(token)) == ("agent", "a1")
    # ... and then asked for again, and refused
    clock.now += 1.0
    assert await holders.holder(hash_token(token)) is None


async def test_a_revoked_api_token_is_refused_at_once_everywhere(
    coordinator: RunningCoordinator, other_replica: Repository
) -> None:
    with coordinator.client() as admin:
        created = admin.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).json()
    holders = TokenHolders(other_replica, clock=Clock())
    assert await holders.holder(hash_token(created["token"])) == ("viewer", None)
    with coordinator.client() as admin:
        assert admin.delete(f"/api/v1/tokens/{created['id']}").status_code == 200
    assert await holders.holder(hash_token(created["token"])) is None  # no clock change
