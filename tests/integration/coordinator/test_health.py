"""/health checks the database and, when configured, Redis; the bus fans out over Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from claude_cluster.coordinator.bus import RedisBus
from tests.conftest import RunningCoordinator
from tests.support.servers import free_port

pytestmark = pytest.mark.redis


def test_health_reports_redis(start_coordinator: Callable[..., RunningCoordinator]) -> None:
    coordinator = start_coordinator(redis_url="redis://127.0.0.1:6379/0")
    with coordinator.client() as api:
        body = api.get("/health").json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "redis": "ok"}


def test_a_coordinator_without_its_redis_starts_and_says_so(
    start_coordinator: Callable[..., RunningCoordinator],
) -> None:
    coordinator = start_coordinator(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with coordinator.client() as api:
        response = api.get("/health")
        assert response.status_code == 503
        assert response.json()["checks"]["redis"].startswith("error")
        # the database is the truth: tasks are still taken
        created = api.post(
            "/api/v1/tasks",
            json={"title": "t", "github_repository": "acme/app", "github_issue_number": 1},
        )
        assert created.status_code == 201


async def test_redis_bus_fans_out_between_instances() -> None:
    a, b = RedisBus("redis://127.0.0.1:6379/0"), RedisBus("redis://127.0.0.1:6379/0")
    channel = f"test:{free_port()}"
    received: list[dict[str, object]] = []

    async def listen() -> None:
        async for message in b.subscribe(channel):
            received.append(message)
            return

    listener = asyncio.create_task(listen())
    try:
        for _ in range(50):  # until the subscription is live
            await a.publish(channel, {"n": 1})
            await asyncio.sleep(0.05)
            if received:
                break
        await asyncio.wait_for(listener, timeout=5)
    finally:
        listener.cancel()
        await a.close()
        await b.close()
    assert received == [{"n": 1}]
