"""The real coordinator wired to a fake GitHub (real HTTP both ways): webhooks from the fake
to the coordinator, REST calls from the coordinator to the fake, and simulated agents.

``loop`` is a :class:`Loop`: the running coordinator, the fake, a store handle for reading
``webhook_deliveries``, and helpers that wait for the fake's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import WebhookDelivery
from claude_cluster.github import sign
from tests.conftest import RunningCoordinator
from tests.fakes.github_api import Delivery, FakeGitHub
from tests.support.waiting import eventually

TOKEN = "ghp_loop_test_token_0123456789"
SECRET = b"loop-webhook-secret"
REPO = "octo/app"
OTHER = "octo/unwatched"


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_token(TOKEN, login="octocat")
        fake.add_repo(REPO)
        fake.add_repo(OTHER)
        # the people the tests act as are trusted: a collaborator and an organisation member
        fake.add_collaborator(REPO, "octocat", "write")
        fake.add_collaborator(OTHER, "octocat", "write")
        fake.add_member("octo", "reviewer")
        yield fake


@dataclass
class Loop:
    coordinator: RunningCoordinator
    fake: FakeGitHub
    store: Repository
    sessions: async_sessionmaker[AsyncSession]
    api: httpx.AsyncClient

    @property
    def hook_url(self) -> str:
        return self.coordinator.url + "/webhook/github"

    async def act(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a fake action that delivers its webhook synchronously, off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def post(
        self, event: str, body: bytes, *, delivery: str = "d-1", secret: bytes | None = SECRET
    ) -> httpx.Response:
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}
        if secret is not None:
            headers["X-Hub-Signature-256"] = sign(secret, body)
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(self.hook_url, content=body, headers=headers)

    async def delivery(self, delivery_id: str, *, done: bool = True) -> WebhookDelivery:
        """The delivery's row, once its background work finished (``done``)."""

        async def probe() -> WebhookDelivery | None:
            row = await self.store.get_delivery(delivery_id)
            return row if row and (not done or row.status != "received") else None

        return await eventually(probe, timeout=10)

    async def comments(self, number: int, containing: str, timeout: float = 10) -> list[str]:
        """The comments on issue or PR ``number`` that contain ``containing`` (waits for one)."""

        async def probe() -> list[str]:
            bodies = [c["body"] for c in self.fake.comments(REPO, number)]
            return [b for b in bodies if containing in b]

        return await eventually(probe, timeout=timeout)

    async def task(self, task_id: int, status: str | None = None) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            task: dict[str, Any] = (await self.api.get(f"/api/v1/tasks/{task_id}")).json()
            return task if status is None or task["status"] == status else None

        return await eventually(probe, timeout=15)

    async def tasks(self) -> list[dict[str, Any]]:
        response = await self.api.get("/api/v1/tasks")
        assert response.status_code == 200, (response.status_code, response.text)
        result: list[dict[str, Any]] = response.json()
        return result

    def last_delivery(self) -> Delivery:
        return self.fake.deliveries[-1]

    async def delivery_after(self, count: int) -> Delivery:
        """The delivery number ``count`` (0-based): the fake sends ``pull_request.opened``
        from a thread after answering the API call, so it may not exist yet."""

        async def probe() -> Delivery | None:
            return self.fake.deliveries[count] if len(self.fake.deliveries) > count else None

        return await eventually(probe, timeout=10)


@pytest.fixture
def loop_settings(fake_github: FakeGitHub) -> dict[str, Any]:
    """Coordinator settings overrides; tests may change them before ``loop`` starts it."""
    return {
        "github_api_url": fake_github.url,
        "github_token": TOKEN,
        "github_webhook_secret": SECRET.decode(),
        "github_repositories": REPO,
        "github_progress_interval": 0.2,
    }


@pytest.fixture
async def loop(
    start_coordinator: Callable[..., RunningCoordinator],
    fake_github: FakeGitHub,
    loop_settings: dict[str, Any],
    db_url: str,
) -> AsyncIterator[Loop]:
    coordinator = await asyncio.to_thread(start_coordinator, **loop_settings)
    fake_github.set_hook(coordinator.url + "/webhook/github", SECRET)
    engine = create_engine(db_url)
    sessions = sessionmaker(engine)
    store = Repository(sessions, postgres=engine.dialect.name == "postgresql")
    async with coordinator.async_client() as api:
        yield Loop(coordinator, fake_github, store, sessions, api)
    await engine.dispose()
