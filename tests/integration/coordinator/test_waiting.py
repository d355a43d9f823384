"""No task stuck without a word: keywords of an issue are preferences, only explicit
requirements restrict the agents, and a task no agent can take says so (API, CLI, the
dashboard, a gauge). Real coordinator on both backends, simulated agents over HTTP."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from claude_cluster.cli.main import app
from tests.conftest import ADMIN_TOKEN, RunningCoordinator
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def submit(api: httpx.AsyncClient, issue: int, title: str, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/tasks",
        json={
            "title": title,
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


def gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


async def test_a_bug_report_runs_on_a_fleet_without_a_testing_agent(
    coordinator: RunningCoordinator,
) -> None:
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("back", specialties=["backend"])
        task = await submit(api, 1, "Fix the bug in the parser", labels=["bug"])
        assert (task["requirements"], task["preferences"]) == (["general"], ["testing"])
        await eventually(lambda: task_in(api, task["id"], "completed"), timeout=10)


async def test_preferences_pick_the_better_agent(coordinator: RunningCoordinator) -> None:
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("back", specialties=["backend"])
        await sims.add("tester", specialties=["testing"])
        task = await submit(api, 2, "Fix the flaky test")
        await eventually(lambda: task_in(api, task["id"], "completed"), timeout=10)
        runs = (await api.get(f"/api/v1/tasks/{task['id']}/runs")).json()
        assert [r["agent_id"] for r in runs] == ["tester"]


async def test_a_task_no_agent_can_take_says_why_everywhere(
    coordinator: RunningCoordinator,
) -> None:
    async with (
        SimAgents(coordinator.url, heartbeat_interval=0.2) as sims,
        coordinator.async_client() as api,
    ):
        await sims.add("back", specialties=["backend"])
        task = await submit(api, 3, "Cover the parser", labels=["claude-code-testing"])
        assert task["requirements"] == ["testing"]
        shown = (await api.get(f"/api/v1/tasks/{task['id']}")).json()
        assert (shown["status"], shown["waiting_for"]) == (
            "queued",
            "waiting for an agent with: testing",
        )
        listed = (await api.get("/api/v1/tasks", params={"status": "queued"})).json()
        assert [t["waiting_for"] for t in listed] == ["waiting for an agent with: testing"]

        env = {"COORDINATOR_URL": coordinator.url, "ADMIN_TOKEN": ADMIN_TOKEN}
        result = CliRunner().invoke(app, ["task", "show", str(task["id"])], env=env)
        assert result.exit_code == 0 and "waiting for an agent with: testing" in result.output

        async with httpx.AsyncClient(base_url=coordinator.url) as browser:
            await browser.post("/login", data={"token": ADMIN_TOKEN})
            page = (await browser.get(f"/tasks/{task['id']}")).text
            assert "waiting for an agent with: testing" in page

        async def metrics() -> str | None:
            text = (await api.get("/metrics")).text
            return text if gauge(text, "claude_tasks_waiting_for_agent") == 1 else None

        text = await eventually(metrics, timeout=25)  # the gauges update every 10 s
        assert gauge(text, "claude_tasks_oldest_queued_seconds") > 0

        # an agent with the requirement arrives: the task runs and the word is gone
        await sims.add("tester", specialties=["testing"])
        done = await eventually(lambda: task_in(api, task["id"], "completed"), timeout=10)
        assert done["waiting_for"] is None
