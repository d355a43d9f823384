"""Fencing at delivery (SPEC §5): the confirmation that a run still holds its task, the
delivery window it buys, and the grace a starting coordinator gives every active run.

Real coordinator (uvicorn on a socket) on SQLite and PostgreSQL, simulated agents that are
real HTTP servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from claude_cluster.coordinator.app import create_app
from claude_cluster.coordinator.store.db import create_engine
from tests.conftest import RunningCoordinator, coordinator_settings
from tests.support.servers import ServerThread, free_port
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

StartCoordinator = Callable[..., RunningCoordinator]


def task_body(issue: int) -> dict[str, Any]:
    return {
        "title": f"Issue {issue}",
        "description": "something to do",
        "github_repository": "acme/app",
        "github_issue_number": issue,
        "requirements": [],
    }


async def create(api: httpx.AsyncClient, issue: int) -> int:
    response = await api.post("/api/v1/tasks", json=task_body(issue))
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def runs(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return sorted(history, key=lambda r: r["attempt"])


async def active_run(api: httpx.AsyncClient, task_id: int, agent_id: str) -> int | None:
    for run in await runs(api, task_id):
        if run["agent_id"] == agent_id and run["status"] == "running":
            return int(run["id"])
    return None


async def test_only_the_run_that_holds_its_task_may_deliver(
    start_coordinator: StartCoordinator,
) -> None:
    coordinator = start_coordinator(run_lease_seconds=1.0)
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("a1", behaviour="hold")
        task_id = await create(api, 1)
        first = await eventually(lambda: active_run(api, task_id, "a1"))
        # the run's own agent: confirmed, stamped, and seen
        confirmed = await sims.confirm_delivery("a1", first)
        assert confirmed.status_code == 200, confirmed.text
        body = confirmed.json()
        assert body["run_id"] == first and body["deliver_within_seconds"] == 300
        assert body["token"] is None  # the test coordinator mints no GitHub token
        run = (await api.get(f"/api/v1/runs/{first}")).json()
        assert run["delivery_confirmed_at"] is not None
        # another agent may not ask for it
        await sims.add("b1", behaviour="hold")
        other = await sims.confirm_delivery("b1", first)
        assert other.status_code == 403
        # partition: the agent of a second task goes silent but keeps its run; after the
        # lease the task runs on the other agent, and the old run may no longer deliver
        task2 = await create(api, 2)
        held = await eventually(lambda: _held_by(sims, task2))
        agent_id, old_run = held
        sims.agents[agent_id].heartbeating = False
        survivor = "b1" if agent_id == "a1" else "a1"

        async def moved() -> int | None:
            return await active_run(api, task2, survivor)

        new_run = await eventually(moved, timeout=15)
        assert new_run > old_run  # the run id is the fencing token
        refused = await sims.confirm_delivery(agent_id, old_run)
        assert refused.status_code == 409
        assert "lost" in refused.json()["detail"] and "do not deliver" in refused.json()["detail"]
        assert (await sims.confirm_delivery(survivor, new_run)).status_code == 200
        # the deliver token goes through the same check: refused for the old run
        assert (await sims.git_token(agent_id, old_run)).status_code == 409
        assert (await sims.git_token(survivor, new_run)).status_code == 200
        metrics = (await api.get("/metrics")).text
        assert 'claude_delivery_confirmations_total{outcome="refused"}' in metrics


async def _held_by(sims: SimAgents, task_id: int) -> tuple[str, int] | None:
    for agent in sims.agents.values():
        for run_id, body in agent.held.items():
            if body["task_id"] == task_id:
                return agent.id, run_id
    return None


async def test_a_confirmed_run_keeps_its_task_for_the_delivery_window(
    start_coordinator: StartCoordinator,
) -> None:
    coordinator = start_coordinator(run_lease_seconds=1.0, delivery_window_seconds=3.0)
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        agent = await sims.add("a1", behaviour="hold")
        task_id = await create(api, 3)
        run_id = await eventually(lambda: active_run(api, task_id, "a1"))
        assert (await sims.confirm_delivery("a1", run_id)).status_code == 200
        agent.heartbeating = False  # the agent is pushing and nobody hears from it
        silent = time.monotonic()
        await asyncio.sleep(2.5)  # more than a lease: an unconfirmed run would be lost
        assert (await active_run(api, task_id, "a1")) == run_id

        async def lost() -> bool:
            return (await runs(api, task_id))[0]["status"] == "lost"

        await eventually(lost, timeout=10)
        # window (3 s) + lease (1 s) after the confirmation, give or take a sweep
        assert time.monotonic() - silent >= 3.5


async def test_a_starting_coordinator_gives_every_run_a_lease_of_grace(
    db_url: str,
) -> None:
    port = free_port()
    settings = coordinator_settings(db_url, port=port, run_lease_seconds=2.0)
    server = ServerThread(create_app(settings), port=port).start()
    try:
        async with (
            SimAgents(server.url, heartbeat_interval=0.2) as sims,
            httpx.AsyncClient(
                base_url=server.url,
                headers={"Authorization": f"Bearer {settings.admin_token}"},
                timeout=10,
            ) as api,
        ):
            await sims.add("a1", behaviour="hold")
            task_id = await create(api, 4)
            run_id = await eventually(lambda: active_run(api, task_id, "a1"))
            await asyncio.to_thread(server.stop)  # a restart with a migration, say
            await asyncio.sleep(3.0)  # longer than a lease: the run's last_seen is stale
            server = ServerThread(create_app(settings), port=port).start()
            # heartbeats resume within an interval; without the grace the first sweep
            # would have lost the run
            await asyncio.sleep(3.0)
            history = await runs(api, task_id)
            assert [(r["id"], r["status"]) for r in history] == [(run_id, "running")]
    finally:
        server.stop()


async def test_a_run_no_agent_took_is_lost_after_a_lease_and_a_push_timeout(
    start_coordinator: StartCoordinator,
) -> None:
    # a replica killed between making a run and recording the agent's answer leaves it
    # `dispatching`; no agent names it in a heartbeat, so it must not hold its task long
    coordinator = start_coordinator(run_lease_seconds=1.0, agent_call_timeout=3.0)
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        agent = await sims.add("a1", behaviour="hold")
        task_id = await create(api, 5)
        run_id = await eventually(lambda: active_run(api, task_id, "a1"))
        agent.held.clear()  # the agent never had it
        engine = create_engine(coordinator.settings.database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE task_runs SET status = 'dispatching', last_seen_at = :now "
                         "WHERE id = :id"),
                    {"now": datetime.now(UTC), "id": run_id},
                )  # fmt: skip
        finally:
            await engine.dispose()
        stuck = time.monotonic()
        await asyncio.sleep(2.0)  # past the lease of a running run, within the push timeout
        assert (await runs(api, task_id))[0]["status"] == "dispatching"

        async def lost() -> bool:
            return (await runs(api, task_id))[0]["status"] == "lost"

        await eventually(lost, timeout=10)
        # lease (1 s) + AGENT_CALL_TIMEOUT (3 s), give or take a sweep
        assert 3.5 <= time.monotonic() - stuck < 8.0
