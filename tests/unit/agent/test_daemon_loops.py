"""Registration back-off and the heartbeat loop against a scripted coordinator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from claude_cluster.agent.coordinator_client import CoordinatorClient, CoordinatorRejected
from claude_cluster.agent.heartbeat import HeartbeatConfig, HeartbeatLoop
from claude_cluster.agent.pool import StopCause
from claude_cluster.agent.registration import Backoff, RegistrationConfig, register
from claude_cluster.domain.wire import AgentRegistration

pytestmark = pytest.mark.timeout(20)
REG = AgentRegistration(id="agent-1", name="agent-1", secret="s" * 20)
REPLY = {
    "agent": {"id": "agent-1"},
    "token": "tok-1",
    "created": True,
    "heartbeat_interval": 5,
    "lease_seconds": 30,
}


def client(handler: Any) -> CoordinatorClient:
    return CoordinatorClient(
        "http://coordinator", registration_token="reg", transport=httpx.MockTransport(handler)
    )


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    backoff = Backoff(RegistrationConfig(initial_delay=1, max_delay=8, jitter=0.2))
    delays = [backoff.next() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal * 0.8 <= delay <= nominal * 1.2
    backoff.reset()
    assert backoff.next() <= 1.2


async def test_registration_retries_while_the_coordinator_is_down() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 2:
            return httpx.Response(502)
        assert json.loads(request.content)["secret"] == "s" * 20
        return httpx.Response(201, json=REPLY)

    c = client(handler)
    config = RegistrationConfig(initial_delay=0.01, max_delay=0.02)
    registered = await register(c, REG, config=config)
    assert registered is not None and registered.token == "tok-1" == c.token
    assert calls == ["Bearer reg"] * 3


async def test_a_wrong_registration_token_is_not_retried() -> None:
    c = client(lambda request: httpx.Response(401, json={"detail": "bad token"}))
    with pytest.raises(CoordinatorRejected, match="bad token"):
        await register(c, REG, config=RegistrationConfig(initial_delay=0.01))


async def test_registration_stops_when_asked() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    stop = asyncio.Event()
    task = asyncio.create_task(register(client(down), REG, stop=stop))
    await asyncio.sleep(0.05)
    stop.set()
    assert await asyncio.wait_for(task, 5) is None


class FakePool:
    def __init__(self) -> None:
        self.stopped: list[tuple[int | None, StopCause]] = []
        self.draining = False
        self.not_ready: str | None = None
        self.working = 1
        self.capacity = 2
        self.load = 0.5
        self.last_completed_at = None

    def held_run_ids(self) -> list[int]:
        return [7, 8]

    def stop_run(self, run_id: int, cause: StopCause) -> bool:
        self.stopped.append((run_id, cause))
        return True

    def stop_all(self, cause: StopCause) -> int:
        self.stopped.append((None, cause))
        return 1


async def test_heartbeat_names_the_runs_and_stops_the_ones_not_ours() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer tok-1"
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"stop_run_ids": [8], "draining": False})

    c = client(handler)
    c.token = "tok-1"
    pool = FakePool()
    loop = HeartbeatLoop(c, pool, HeartbeatConfig(), agent_id="agent-1", reregister=_never)  # type: ignore[arg-type]
    assert await loop.beat()
    assert bodies[0]["run_ids"] == [7, 8] and bodies[0]["status"] == "busy"
    assert bodies[0]["current_load"] == 0.5 and bodies[0]["active_task_count"] == 1
    assert pool.stopped == [(8, StopCause.NOT_ASSIGNED)]


async def _never() -> None:
    raise AssertionError("no re-registration expected")


async def test_heartbeat_reregisters_when_the_coordinator_forgot_us() -> None:
    answers = iter([httpx.Response(404, json={"detail": "agent agent-1 not found"})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, httpx.Response(200, json={"stop_run_ids": []}))

    reregistered: list[bool] = []

    async def reregister() -> None:
        reregistered.append(True)

    c = client(handler)
    c.token = "tok-1"
    loop = HeartbeatLoop(
        c, FakePool(), HeartbeatConfig(), agent_id="agent-1", reregister=reregister
    )  # type: ignore[arg-type]
    assert await loop.beat() and reregistered == [True]


async def test_no_heartbeat_for_a_lease_stops_no_run() -> None:
    """Runs go on through an outage; their delivery is fenced instead (job_runner)."""

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    c = client(down)
    c.token = "tok-1"
    pool = FakePool()
    config = HeartbeatConfig(interval=0.01, lease_seconds=0.2)
    loop = HeartbeatLoop(c, pool, config, agent_id="agent-1", reregister=_never)  # type: ignore[arg-type]
    assert not await loop.beat() and pool.stopped == []
    await asyncio.sleep(0.25)
    assert not await loop.beat()
    assert pool.stopped == []
