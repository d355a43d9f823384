"""The dispatcher and reconciler against simulated agents that are real HTTP servers:
agents that accept, refuse, time out and vanish; caps, drain, retries and cancellation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import RunningCoordinator
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


def task_body(issue: int, **extra: Any) -> dict[str, Any]:
    return {
        "title": f"Issue {issue}",
        "description": "something to do",
        "github_repository": "acme/app",
        "github_issue_number": issue,
        "requirements": [],
        **extra,
    }


async def create(api: httpx.AsyncClient, issue: int, **extra: Any) -> dict[str, Any]:
    response = await api.post("/api/v1/tasks", json=task_body(issue, **extra))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def status_of(api: httpx.AsyncClient, task_id: int, wanted: str) -> dict[str, Any] | None:
    task: dict[str, Any] = (await api.get(f"/api/v1/tasks/{task_id}")).json()
    return task if task["status"] == wanted else None


async def wait_status(
    api: httpx.AsyncClient, task_id: int, wanted: str, timeout: float = 15
) -> dict[str, Any]:
    return await eventually(lambda: status_of(api, task_id, wanted), timeout=timeout)


async def runs(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return result


async def test_a_new_task_is_dispatched_at_once_and_completes(
    coordinator: RunningCoordinator,
) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1")
        task = await create(api, 1)
        done = await wait_status(api, task["id"], "completed", timeout=5)
        assert done["attempts"] == 1
        assert done["cost_usd"] == pytest.approx(0.01)
        history = await runs(api, task["id"])
        assert [(r["status"], r["agent_id"]) for r in history] == [("succeeded", "a1")]
        agent = (await api.get("/api/v1/agents/a1")).json()
        assert agent["active_task_count"] == 0
        assert agent["total_tasks_completed"] == 1


async def test_routing_prefers_the_matching_specialty(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("front", specialties=["frontend"])
        await sims.add("back", specialties=["backend"])
        task = await create(api, 2, requirements=["backend"])
        await wait_status(api, task["id"], "completed")
        assert [r["agent_id"] for r in await runs(api, task["id"])] == ["back"]


async def test_a_refusing_agent_hands_the_task_to_another(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a-refuses", behaviour="refuse")
        await sims.add("b-works")
        task = await create(api, 3)
        await wait_status(api, task["id"], "completed")
        history = await runs(api, task["id"])
        assert [(r["agent_id"], r["status"], r["error_category"]) for r in history] == [
            ("a-refuses", "lost", "dispatch_failed"),
            ("b-works", "succeeded", None),
        ]
        done = (await api.get(f"/api/v1/tasks/{task['id']}")).json()
        assert done["retry_count"] == 0, "a refused push is not the task's fault"
        assert done["attempts"] == 2


async def test_an_agent_that_does_not_answer_in_time(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a-slow", behaviour="slow")
        await sims.add("b-works")
        task = await create(api, 4)
        await wait_status(api, task["id"], "completed", timeout=15)
        assert [r["agent_id"] for r in await runs(api, task["id"])] == ["a-slow", "b-works"]


async def test_a_vanished_agent_loses_its_run_which_retries_elsewhere(
    start_coordinator: Callable[..., RunningCoordinator],
) -> None:
    coordinator = start_coordinator(run_lease_seconds=1.0)
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("a-dies", behaviour="hold")
        task = await create(api, 5)
        await wait_status(api, task["id"], "in_progress")
        await sims.add("b-works")
        sims.vanish("a-dies")
        done = await wait_status(api, task["id"], "completed", timeout=15)
        assert done["retry_count"] == 1
        history = await runs(api, task["id"])
        assert [(r["agent_id"], r["status"], r["error_category"]) for r in history] == [
            ("a-dies", "lost", "lost"),
            ("b-works", "succeeded", None),
        ]


async def test_retryable_failures_back_off_then_give_up(
    start_coordinator: Callable[..., RunningCoordinator],
) -> None:
    coordinator = start_coordinator(task_retry_attempts=2)
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        task = await create(api, 6)
        for attempt in range(1, 4):
            run = await eventually(lambda: _held_run(sims, "a1"), timeout=10)
            reply = await sims.finish(
                "a1", run, succeeded=False, error_category="overloaded", message="529"
            )
            assert reply.status_code == 200
            if attempt < 3:
                assert reply.json()["task_status"] == "queued"
                assert reply.json()["retry_in_seconds"] == pytest.approx(0.2 * 2 ** (attempt - 1))
        failed = await wait_status(api, task["id"], "failed")
        assert failed["attempts"] == 3
        assert failed["retry_count"] == 2
        assert "overloaded" in failed["error_message"]


async def _held_run(sims: SimAgents, agent_id: str) -> int | None:
    held = sims.agents[agent_id].held
    return next(iter(held)) if held else None


async def test_a_non_retryable_failure_ends_the_task(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        task = await create(api, 7)
        run = await eventually(lambda: _held_run(sims, "a1"))
        await sims.finish(
            "a1", run, succeeded=False, error_category="tests_failed", message="2 failed"
        )
        failed = await wait_status(api, task["id"], "failed")
        assert failed["attempts"] == 1
        # a second report of the same run changes nothing
        again = await sims.finish("a1", run, succeeded=True)
        assert again.json()["already_finished"] is True
        assert (await api.get(f"/api/v1/tasks/{task['id']}")).json()["status"] == "failed"


async def test_slots_free_up_and_dispatch_at_once(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold", capacity=1)
        first = await create(api, 8)
        second = await create(api, 9)
        await wait_status(api, first["id"], "in_progress")
        assert (await api.get(f"/api/v1/tasks/{second['id']}")).json()["status"] == "queued"
        assert len(sims.agents["a1"].held) == 1
        run = next(iter(sims.agents["a1"].held))
        await sims.finish("a1", run)
        await wait_status(api, second["id"], "in_progress", timeout=3)


async def test_global_cap(start_coordinator: Callable[..., RunningCoordinator]) -> None:
    coordinator = start_coordinator(max_concurrent_tasks=2)
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        await sims.add("a2", behaviour="hold")
        for issue in range(10, 14):
            await create(api, issue)
        await eventually(lambda: _count_held(sims, 2))
        status = (await api.get("/api/v1/queue/status")).json()
        assert status["active_tasks"] == 2
        assert status["pending_tasks"] == 2


async def _count_held(sims: SimAgents, n: int) -> bool:
    return sum(len(a.held) for a in sims.agents.values()) == n


async def test_priority_then_age(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        low = await create(api, 20, priority="low")
        old = await create(api, 21)
        urgent = await create(api, 22, labels=["urgent"])
        await sims.add("a1", behaviour="hold", capacity=3)
        await eventually(lambda: _count_held(sims, 3))
        # pushes travel concurrently; run ids record the order of the claim
        order = [body["task_id"] for _, body in sorted(sims.agents["a1"].held.items())]
        assert order == [urgent["id"], old["id"], low["id"]]


async def test_drain_stops_new_work(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1")
        drained = await api.post("/api/v1/agents/a1/drain")
        assert drained.json()["draining"] is True
        task = await create(api, 30)
        assert (await sims.heartbeat(sims.agents["a1"]))["draining"] is True
        assert (await api.get(f"/api/v1/tasks/{task['id']}")).json()["status"] == "queued"
        assert sims.agents["a1"].received == []
        await api.post("/api/v1/agents/a1/drain", json={"drain": False})
        await wait_status(api, task["id"], "completed")


async def test_cancelling_a_running_task_stops_it_on_the_agent(
    coordinator: RunningCoordinator,
) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        task = await create(api, 40)
        await wait_status(api, task["id"], "in_progress")
        cancelled = await api.delete(f"/api/v1/tasks/{task['id']}")
        assert cancelled.json()["status"] == "cancelled"
        await eventually(lambda: _count_held(sims, 0))
        history = await runs(api, task["id"])
        assert history[0]["status"] == "cancelled"
        assert (await api.get("/api/v1/agents/a1")).json()["active_task_count"] == 0


async def test_heartbeat_fences_runs_that_are_not_the_agents(
    coordinator: RunningCoordinator,
) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        agent = await sims.add("a1", behaviour="hold")
        agent.held[999] = {"task_id": 1}
        reply = await sims.heartbeat(agent)
        assert reply["stop_run_ids"] == [999]
        assert 999 not in agent.held
        del api


async def test_manual_assignment(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold", specialties=["backend"])
        task = await create(api, 50, requirements=["frontend"])
        await sims.heartbeat(sims.agents["a1"])
        # no frontend agent: the scheduler leaves it queued, an admin may place it anyway
        assert (await api.get(f"/api/v1/tasks/{task['id']}")).json()["status"] == "queued"
        await api.post("/api/v1/agents/a1/drain")
        refused = await api.post("/api/v1/agents/a1/tasks", json={"task_id": task["id"]})
        assert refused.status_code == 409
        await api.post("/api/v1/agents/a1/drain", json={"drain": False})
        assigned = await api.post("/api/v1/agents/a1/tasks", json={"task_id": task["id"]})
        assert assigned.status_code == 200, assigned.text
        assert assigned.json()["assigned_agent_id"] == "a1"
        await eventually(lambda: _count_held(sims, 1))
        again = await api.post("/api/v1/agents/a1/tasks", json={"task_id": task["id"]})
        assert again.status_code == 409
        listed = (await api.get("/api/v1/agents/a1/tasks")).json()
        assert [r["task_id"] for r in listed] == [task["id"]]
        missing = await api.post("/api/v1/agents/nobody/tasks", json={"task_id": task["id"]})
        assert missing.status_code == 404
