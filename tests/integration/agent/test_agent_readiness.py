"""No black holes, agent side: a real agent daemon whose runner is missing, or whose
workspace lacks space, registers as not ready with the reason, gets no task, and clears
itself when its periodic recheck passes (real coordinator, real HTTP, a real run)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningCoordinator
from tests.support.agents import admin, agent_settings, fixer_script, make_origin, start_daemon
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


async def test_a_missing_runner_keeps_the_agent_from_work_until_it_is_installed(
    start_coordinator: Callable[..., RunningCoordinator], tmp_path: Path
) -> None:
    coordinator = start_coordinator(heartbeat_interval=0.3)
    origin = make_origin(tmp_path / "remote")
    script = fixer_script(tmp_path / "scripts")
    runner = tmp_path / "bin" / "fixer"  # not there yet: the host lacks its runner
    settings = agent_settings(
        coordinator.url,
        tmp_path / "ws",
        agent_command=f"{runner} {script}",
        ready_check_interval=0.3,
        heartbeat_interval=0.3,
    )
    agent = await start_daemon(settings)
    try:
        async with admin(coordinator.url) as api:

            async def row() -> dict[str, object] | None:
                answer = await api.get("/api/v1/agents/agent-1")
                return answer.json() if answer.status_code == 200 else None

            registered = await eventually(row, timeout=20, interval=0.1)
            reason = str(registered["not_ready_reason"])
            assert "runner command" in reason and str(runner) in reason
            created = await api.post(
                "/api/v1/tasks",
                json={
                    "title": "add() subtracts",
                    "description": "add(2, 3) returns -1",
                    "github_repository": str(origin),
                    "github_issue_number": 3,
                },
            )
            task_id = created.json()["id"]
            waiting = (await api.get(f"/api/v1/tasks/{task_id}")).json()
            assert waiting["waiting_for"] == "waiting for an agent: none is online and ready"
            await asyncio.sleep(1.5)  # several sweeps, heartbeats and rechecks
            assert (await api.get(f"/api/v1/tasks/{task_id}/runs")).json() == []
            async with agent.client() as client:
                metrics = (await client.get("/metrics")).text
                assert 'claude_agent_ready{agent_id="agent-1"} 0.0' in metrics

            # the operator installs the runner: the recheck clears the agent, the task runs
            runner.parent.mkdir(parents=True)
            runner.symlink_to(sys.executable)

            async def done() -> dict[str, object] | None:
                task = (await api.get(f"/api/v1/tasks/{task_id}")).json()
                return task if task["status"] in ("completed", "review") else None

            finished = await eventually(done, timeout=40, interval=0.2)
            assert finished["retry_count"] == 0
            assert (await row() or {})["not_ready_reason"] is None
    finally:
        await agent.stop()


async def test_too_little_free_space_is_not_ready(
    start_coordinator: Callable[..., RunningCoordinator], tmp_path: Path
) -> None:
    coordinator = start_coordinator(heartbeat_interval=0.3)
    settings = agent_settings(coordinator.url, tmp_path / "ws", workspace_min_free_gb=1e9)
    agent = await start_daemon(settings)
    try:
        async with admin(coordinator.url) as api:

            async def reason() -> str | None:
                answer = await api.get("/api/v1/agents/agent-1")
                return answer.json()["not_ready_reason"] if answer.status_code == 200 else None

            text = await eventually(reason, timeout=20, interval=0.1)
            assert "GB free, below WORKSPACE_MIN_FREE_GB=1e+09" in text
        async with agent.client() as client:
            status = (await client.get("/status")).json()
            assert (
                status["ready"] is False and "WORKSPACE_MIN_FREE_GB" in status["not_ready_reason"]
            )
    finally:
        await agent.stop()


async def test_a_run_that_fails_for_the_agent_rechecks_it_at_once(
    start_coordinator: Callable[..., RunningCoordinator], tmp_path: Path
) -> None:
    """The runner vanishes after start: the run fails as runner_error, the task goes back
    to the queue without a retry, and the agent's immediate recheck says why it is not
    ready (long before its periodic one)."""
    coordinator = start_coordinator(heartbeat_interval=0.3)
    origin = make_origin(tmp_path / "remote")
    script = fixer_script(tmp_path / "scripts")
    runner = tmp_path / "bin" / "fixer"
    runner.parent.mkdir(parents=True)
    runner.symlink_to(sys.executable)
    settings = agent_settings(
        coordinator.url,
        tmp_path / "ws",
        agent_command=f"{runner} {script}",
        ready_check_interval=600,
        heartbeat_interval=0.3,
    )
    agent = await start_daemon(settings)
    try:
        async with admin(coordinator.url) as api:

            async def ready() -> bool:
                answer = await api.get("/api/v1/agents/agent-1")
                return answer.status_code == 200 and answer.json()["not_ready_reason"] is None

            await eventually(ready, timeout=20, interval=0.1)
            runner.unlink()
            created = await api.post(
                "/api/v1/tasks",
                json={
                    "title": "add() subtracts",
                    "description": "add(2, 3) returns -1",
                    "github_repository": str(origin),
                    "github_issue_number": 4,
                },
            )
            task_id = created.json()["id"]

            async def not_ready() -> str | None:
                reason: str | None = (await api.get("/api/v1/agents/agent-1")).json()[
                    "not_ready_reason"
                ]
                return reason

            reason = await eventually(not_ready, timeout=20, interval=0.1)
            assert "runner command" in reason
            runs = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
            # one run, or two when the cool-down ended before the recheck's heartbeat (on a
            # loaded machine the second push may also time out: dispatch_failed)
            categories = [r["error_category"] for r in runs]
            assert "runner_error" in categories, categories
            assert set(categories) <= {"runner_error", "dispatch_failed"}, categories
            task = (await api.get(f"/api/v1/tasks/{task_id}")).json()
            assert (task["status"], task["retry_count"]) == ("queued", 0)
    finally:
        await agent.stop()
