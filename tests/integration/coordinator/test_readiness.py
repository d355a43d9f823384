"""No black holes: an agent that is not ready gets no work and says why, and an agent whose
runs fail for reasons of its own (runner, credentials, sandbox, disk) stops getting work
without spending the tasks' retries. Real coordinator on both backends, simulated agents
that are real HTTP servers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import RunningCoordinator
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def create(api: httpx.AsyncClient, issue: int, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/tasks",
        json={
            "title": f"Issue {issue}",
            "description": "something to do",
            "github_repository": "acme/app",
            "github_issue_number": issue,
            "requirements": [],
            **extra,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def task_in(api: httpx.AsyncClient, task_id: int, wanted: str) -> dict[str, Any] | None:
    task: dict[str, Any] = (await api.get(f"/api/v1/tasks/{task_id}")).json()
    return task if task["status"] == wanted else None


async def agent(api: httpx.AsyncClient, agent_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/api/v1/agents/{agent_id}")).json()
    return body


async def runs_of(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return body


async def test_a_not_ready_agent_gets_no_work_says_why_and_clears_itself(
    coordinator: RunningCoordinator,
) -> None:
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        broken = await sims.add("broken", not_ready="runner 'claude' not found on PATH")
        row = await agent(api, "broken")
        assert row["not_ready_reason"] == "runner 'claude' not found on PATH"
        assert (await api.get("/api/v1/queue/status")).json()["available_nodes"] == 0
        task = await create(api, 1)
        await sims.add("good")
        await eventually(lambda: task_in(api, task["id"], "completed"), timeout=10)
        assert [r["agent_id"] for r in await runs_of(api, task["id"])] == ["good"]
        assert broken.received == []

        # its recheck passes: the next heartbeat clears the reason and it takes work
        broken.not_ready = None

        async def cleared() -> bool:
            return (await agent(api, "broken"))["not_ready_reason"] is None

        await eventually(cleared, timeout=5)
        sims.agents["good"].behaviour = "refuse"
        second = await create(api, 2)
        await eventually(lambda: task_in(api, second["id"], "completed"), timeout=10)
        assert [r["agent_id"] for r in await runs_of(api, second["id"])][-1] == "broken"

        # and when a recheck fails again, dispatch stops again
        broken.not_ready = "workspace /srv/ws has 0.1 GB free, below 2 GB"

        async def blocked() -> str | None:
            reason: str | None = (await agent(api, "broken"))["not_ready_reason"]
            return reason

        assert "0.1 GB free" in await eventually(blocked, timeout=5)


async def test_an_operator_clears_a_not_ready_agent(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url, heartbeat_interval=60) as sims:
        await sims.add("a1", not_ready="sandbox canary failed")
        async with coordinator.async_client() as api:
            assert (await agent(api, "a1"))["not_ready_reason"] == "sandbox canary failed"
            cleared = await api.post("/api/v1/agents/a1/ready")
            assert cleared.status_code == 200, cleared.text
            assert (cleared.json()["not_ready_reason"], cleared.json()["fault_streak"]) == (None, 0)
            assert (await api.post("/api/v1/agents/nope/ready")).status_code == 404
        async with coordinator.async_client(sims.agents["a1"].token) as as_agent:
            assert (await as_agent.post("/api/v1/agents/a1/ready")).status_code == 403


async def held_run(sims: SimAgents, agent_id: str) -> int | None:
    held = sims.agents[agent_id].held
    return next(iter(held), None)


async def test_a_broken_agent_no_longer_fails_tasks(coordinator: RunningCoordinator) -> None:
    """An agent whose runner is missing fails each run with runner_error: the task goes
    back to the queue without spending a retry, the agent stops getting work after two
    such failures in a row, and the task completes on a good agent."""
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("broken", behaviour="hold")
        task = await create(api, 1)
        for streak, category in enumerate(("runner_error", "auth_error"), start=1):
            run = await eventually(lambda: held_run(sims, "broken"), timeout=10)
            reply = await sims.finish(
                "broken", run, succeeded=False, error_category=category, message="no claude"
            )
            assert reply.json()["task_status"] == "queued"
            row = await agent(api, "broken")
            assert row["fault_streak"] == streak
            # back in the queue without a retry spent (the dispatcher may have handed it
            # out again already: after one fault the agent still takes work)
            queued = (await api.get(f"/api/v1/tasks/{task['id']}")).json()
            assert queued["retry_count"] == 0
            assert queued["status"] in ("queued", "assigned", "running")
        assert "2 runs in a row failed for a reason of this agent" in row["not_ready_reason"]
        assert "auth_error: no claude" in row["not_ready_reason"]
        assert "claude-cluster agents ready broken" in row["not_ready_reason"]
        # blocked: the agent's passing heartbeats do not clear a block its runs caused
        await sims.heartbeat(sims.agents["broken"])
        assert (await agent(api, "broken"))["not_ready_reason"] is not None

        await sims.add("good")
        done = await eventually(lambda: task_in(api, task["id"], "completed"), timeout=10)
        assert (done["retry_count"], done["attempts"]) == (0, 3)
        history = [(r["agent_id"], r["error_category"]) for r in await runs_of(api, task["id"])]
        assert history == [("broken", "runner_error"), ("broken", "auth_error"), ("good", None)]
        events = (await api.get(f"/api/v1/tasks/{task['id']}/events")).json()
        faults = [e for e in events if e["kind"] == "agent_fault"]
        assert len(faults) == 2 and "without counting a retry" in faults[0]["message"]

        # the operator fixes the host and clears it: it takes work again
        assert (await api.post("/api/v1/agents/broken/ready")).status_code == 200
        sims.agents["good"].behaviour = "refuse"
        second = await create(api, 2)
        run = await eventually(lambda: held_run(sims, "broken"), timeout=10)
        await sims.finish("broken", run)
        await eventually(lambda: task_in(api, second["id"], "completed"), timeout=10)


async def test_a_success_ends_the_fault_streak(coordinator: RunningCoordinator) -> None:
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("flaky", behaviour="hold")
        first = await create(api, 1)
        run = await eventually(lambda: held_run(sims, "flaky"), timeout=10)
        await sims.finish("flaky", run, succeeded=False, error_category="disk_full", message="x")
        assert (await agent(api, "flaky"))["fault_streak"] == 1
        run = await eventually(lambda: held_run(sims, "flaky"), timeout=10)
        await sims.finish("flaky", run)
        await eventually(lambda: task_in(api, first["id"], "completed"), timeout=10)
        row = await agent(api, "flaky")
        assert (row["fault_streak"], row["not_ready_reason"]) == (0, None)
        # a task's own failure is not the agent's: it fails the task and leaves the streak
        second = await create(api, 2)
        run = await eventually(lambda: held_run(sims, "flaky"), timeout=10)
        reply = await sims.finish(
            "flaky", run, succeeded=False, error_category="tests_failed", message="red"
        )
        assert reply.json()["task_status"] == "failed"
        assert (await agent(api, "flaky"))["fault_streak"] == 0
        assert (await api.get(f"/api/v1/tasks/{second['id']}")).json()["retry_count"] == 0
