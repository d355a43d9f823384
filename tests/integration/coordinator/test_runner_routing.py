"""Routing by runner: a task whose contract names a runner goes only to agents that offer
it. An agent that lacks it refuses the run (``contract_error`` with ``needs_runner``): the
task records the runner and goes back to the queue without spending a retry, and waits,
saying why, until an agent that offers it takes it. Real coordinator on both backends,
simulated agents over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import update

from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.tables import Task
from tests.conftest import RunningCoordinator
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

REFUSAL = "the contract names runner claude, which this agent cannot run: it runs command only"


async def submit(api: httpx.AsyncClient, issue: int, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/tasks",
        json={
            "title": f"issue {issue}",
            "description": "it crashes on empty input",
            "github_repository": "acme/app",
            "github_issue_number": issue,
            **extra,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def task_in(api: httpx.AsyncClient, task_id: int, wanted: str) -> dict[str, Any] | None:
    task: dict[str, Any] = (await api.get(f"/api/v1/tasks/{task_id}")).json()
    return task if task["status"] == wanted else None


async def held_run(sims: SimAgents, agent_id: str) -> int:
    async def probe() -> int | None:
        held = sims.agents[agent_id].held
        return next(iter(held)) if held else None

    return await eventually(probe, timeout=10)


async def test_a_refused_runner_routes_the_task_to_an_agent_that_offers_it_without_a_retry(
    coordinator: RunningCoordinator,
) -> None:
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("cmd", behaviour="hold", runners=["command"])
        task = await submit(api, 1)
        run_id = await held_run(sims, "cmd")
        answer = await sims.finish(
            "cmd",
            run_id,
            succeeded=False,
            error_category="contract_error",
            message=REFUSAL,
            needs_runner="claude",
        )
        assert answer.status_code == 200, answer.text
        # back in the queue, the runner recorded, no retry spent, and it says why it waits
        waiting = await eventually(lambda: task_in(api, task["id"], "queued"), timeout=10)
        assert waiting["required_runner"] == "claude"
        assert waiting["retry_count"] == 0 and waiting["attempts"] == 1
        assert waiting["waiting_for"] == "waiting for an agent with: runner claude"
        events = (await api.get(f"/api/v1/tasks/{task['id']}/events")).json()
        [requeued] = [e for e in events if e["kind"] == "runner_required"]
        assert "cmd cannot run claude" in requeued["message"]
        assert requeued["details"]["runner"] == "claude"
        # the refusing agent is not blamed: no fault, no failure in its statistics
        cmd = (await api.get("/api/v1/agents/cmd")).json()
        assert (cmd["fault_streak"], cmd["total_tasks_failed"], cmd["not_ready_reason"]) == (
            0,
            0,
            None,
        )
        assert cmd["runners"] == ["command"]
        # it is never handed to cmd again; an agent that offers claude takes it
        await sims.add("both", runners=["claude", "command"])
        done = await eventually(lambda: task_in(api, task["id"], "completed"), timeout=10)
        assert done["retry_count"] == 0 and done["attempts"] == 2
        runs = (await api.get(f"/api/v1/tasks/{task['id']}/runs")).json()
        ended = sorted((r["id"], r["agent_id"], r["status"], r["error_category"]) for r in runs)
        assert [(a, s, c) for _, a, s, c in ended] == [
            ("cmd", "failed", "contract_error"),
            ("both", "succeeded", None),
        ]
        assert len(sims.agents["cmd"].received) == 1


async def test_an_agent_that_offers_the_runner_and_refuses_it_fails_the_task_as_before(
    coordinator: RunningCoordinator,
) -> None:
    """No loop: the refusal of a runner the agent says it has is an ordinary
    ``contract_error`` (not retryable), not a reason to route the task again."""
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("liar", behaviour="hold", runners=["claude"])
        task = await submit(api, 2)
        run_id = await held_run(sims, "liar")
        await sims.finish(
            "liar",
            run_id,
            succeeded=False,
            error_category="contract_error",
            message=REFUSAL,
            needs_runner="claude",
        )
        failed = await eventually(lambda: task_in(api, task["id"], "failed"), timeout=10)
        assert failed["error_message"].startswith("contract_error: the contract names runner")
        assert failed["required_runner"] is None and failed["attempts"] == 1


@pytest.mark.parametrize(
    "hostile",
    ["claude'; DROP TABLE tasks; --", "../../../bin/sh", "Claude", "claude\u200b", ""],
)
async def test_a_runner_name_that_is_not_a_runner_is_neither_stored_nor_routed_by(
    coordinator: RunningCoordinator, hostile: str
) -> None:
    """The name comes from a repository's file (through the agent) or from an agent:
    only the known runner names are kept; anything else is an ordinary failure."""
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        agent = await sims.add("cmd", behaviour="hold", runners=["command", hostile, "claude"])
        listed = (await api.get("/api/v1/agents/cmd")).json()
        assert listed["runners"] == ["claude", "command"]
        agent.runners = [hostile]  # the heartbeat carries it too
        await sims.heartbeat(agent)
        assert (await api.get("/api/v1/agents/cmd")).json()["runners"] == []
        task = await submit(api, 3)
        agent.runners = ["command"]
        await sims.heartbeat(agent)
        run_id = await held_run(sims, "cmd")
        await sims.finish(
            "cmd",
            run_id,
            succeeded=False,
            error_category="contract_error",
            message="the contract names a runner this agent cannot run",
            needs_runner=hostile,
        )
        failed = await eventually(lambda: task_in(api, task["id"], "failed"), timeout=10)
        assert failed["required_runner"] is None
        events = (await api.get(f"/api/v1/tasks/{task['id']}/events")).json()
        assert not [e for e in events if e["kind"] == "runner_required"]


async def test_tasks_for_a_runner_nobody_offers_wait_without_blocking_the_queue(
    coordinator: RunningCoordinator,
) -> None:
    """More urgent tasks needing ``codex`` than a claim reads at once sit at the head of
    the queue: the claim skips them in SQL, so the task behind them runs; they wait,
    saying why, and a manual assignment to an agent without codex is refused."""
    async with coordinator.async_client() as api:
        codex = [(await submit(api, 100 + i, priority="urgent"))["id"] for i in range(70)]
    engine = create_engine(coordinator.settings.database_url)
    try:
        async with sessionmaker(engine)() as s, s.begin():
            await s.execute(update(Task).where(Task.id.in_(codex)).values(required_runner="codex"))
    finally:
        await engine.dispose()
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("cmd", runners=["claude", "command"])
        plain = await submit(api, 200, priority="low")
        await eventually(lambda: task_in(api, plain["id"], "completed"), timeout=10)
        queued = (await api.get("/api/v1/tasks", params={"status": "queued", "limit": 100})).json()
        assert sorted(t["id"] for t in queued) == sorted(codex)
        assert {t["waiting_for"] for t in queued} == {"waiting for an agent with: runner codex"}
        assert sims.all_received() == [r["id"] for r in await _runs(api, plain["id"])]
        refused = await api.post("/api/v1/agents/cmd/tasks", json={"task_id": codex[0]})
        assert refused.status_code == 409, refused.text
        # an agent that offers codex takes them
        await sims.add("codex", runners=["codex"], capacity=100)
        await eventually(lambda: task_in(api, codex[-1], "completed"), timeout=20)
        runs = await _runs(api, codex[-1])
        assert [r["agent_id"] for r in runs] == ["codex"]


async def _runs(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return runs
