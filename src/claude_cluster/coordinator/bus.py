"""Live fan-out of events between coordinator processes.

``LocalBus`` serves one process (the embedded default); ``RedisBus`` uses Redis pub/sub so
that every replica sees every event: a task created on one replica wakes the dispatcher of
all, and a dashboard connected to any replica sees every run's log. Losing the bus loses no
task: the database is the truth and the sweep catches up; subscriptions come back by
themselves when Redis does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis

from claude_cluster.logging import get_logger

log = get_logger(__name__)

WAKE = "claude-cluster:wake"
#: seconds before a lost subscription is tried again, doubling up to the maximum
RESUBSCRIBE_INITIAL = 0.5
RESUBSCRIBE_MAX = 2.0
Handler = Callable[[str, dict[str, Any]], None]


class Bus(Protocol):
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...


class LocalBus:
    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._queues.clear()

    async def ping(self) -> None:
        return None

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        for queue in list(self._queues.get(channel, ())):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._queues.setdefault(channel, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues[channel].discard(queue)


class RedisBus:
    def __init__(self, url: str) -> None:
        self._redis = aioredis.from_url(url, decode_responses=True)

    async def start(self) -> None:
        try:
            await self.ping()
        except aioredis.RedisError as exc:
            # Start anyway: /health reports Redis down, and the sweep covers lost wake-ups.
            log.warning("redis_unavailable", error=str(exc))

    async def close(self) -> None:
        await self._redis.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self._redis.publish(channel, json.dumps(message, default=str))
        except aioredis.RedisError as exc:
            # Fan-out is best effort: the sweep and the database catch up.
            log.warning("bus_publish_failed", channel=channel, error=str(exc))

    async def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        """Messages on ``channel`` for as long as the caller listens. A lost connection is
        subscribed again (after 0.5 s, doubling to 2 s, so live within 2 s of Redis's
        return): what was published meanwhile is missed, which the sweep and the live
        log's periodic re-read cover."""
        delay = RESUBSCRIBE_INITIAL
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                delay = RESUBSCRIBE_INITIAL
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        yield json.loads(item["data"])
            except (aioredis.RedisError, OSError) as exc:
                log.warning(
                    "bus_subscription_lost", channel=channel, error=str(exc), retry_in=delay
                )
            finally:
                with contextlib.suppress(aioredis.RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_MAX)


def make_bus(redis_url: str) -> Bus:
    return RedisBus(redis_url) if redis_url else LocalBus()
