"""No task stuck without a word: keywords of an issue are preferences, only explicit
requirements restrict the agents, and a task no agent can take says so (API, CLI, the
dashboard, a gauge), nor a webhook delivery (a gauge). Real coordinator on both backends,
simulated agents over HTTP."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from claude_cluster.cli.main import app
from claude_cluster.coordinator import reconciler
from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import WebhookDelivery
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


async def test_a_webhook_delivery_left_waiting_shows_in_the_gauges(
    coordinator: RunningCoordinator, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler gauges the deliveries from the database, so a delivery no worker
    takes (here: no GitHub loop runs at all) still shows how long it has waited."""
    monkeypatch.setattr(reconciler, "WAIT_GAUGES_SECONDS", 0.2)
    engine = create_engine(db_url)
    sessions = sessionmaker(engine)
    store = Repository(sessions, postgres=engine.dialect.name == "postgresql")
    try:
        waiting = {"payload": "{}", "issue_key": "acme/app#7"}
        assert await store.record_delivery("waits", "issues", "labeled", "acme/app", **waiting)
        # neither a finished delivery nor one recorded without its payload waits for work
        await store.record_delivery("done", "issues", "labeled", "acme/app", status="ignored")
        await store.record_delivery("no-payload", "issues", "labeled", "acme/app")
        async with sessions.begin() as s:
            for delivery_id, minutes in (("waits", 15), ("done", 60), ("no-payload", 60)):
                await s.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id)
                    .values(received_at=utcnow() - timedelta(minutes=minutes))
                )

        async with coordinator.async_client() as api:

            async def gauges() -> tuple[float, float]:
                text = (await api.get("/metrics")).text
                return (
                    gauge(text, "claude_github_deliveries_waiting"),
                    gauge(text, "claude_github_delivery_oldest_waiting_seconds"),
                )

            async def waited_long() -> tuple[float, float] | None:
                count, oldest = await gauges()
                return (count, oldest) if oldest >= 15 * 60 else None

            count, oldest = await eventually(waited_long, timeout=10)
            assert count == 1 and oldest < 20 * 60

            assert await store.finish_delivery("waits", "processed", "done by hand")

            async def none_waiting() -> bool:
                return await gauges() == (0, 0)

            assert await eventually(none_waiting, timeout=10)
    finally:
        await engine.dispose()
