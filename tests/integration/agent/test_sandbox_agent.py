"""Fail closed: an agent on a machine where the sandbox cannot start registers as not
ready, says why (coordinator, /status, metrics) and receives no task."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningCoordinator
from tests.support.agents import admin, agent_settings, fixer_script, make_origin, start_daemon
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


def broken_bwrap(directory: Path) -> Path:
    """A bwrap as it behaves where user namespaces are forbidden."""
    directory.mkdir(parents=True)
    stub = directory / "bwrap"
    stub.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    stub.chmod(0o755)
    return directory


async def test_an_agent_whose_sandbox_cannot_start_is_not_ready_and_gets_no_task(
    start_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", f"{broken_bwrap(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    coordinator = start_coordinator(heartbeat_interval=0.5)
    origin = make_origin(tmp_path / "remote")
    script = fixer_script(tmp_path / "scripts")
    settings = agent_settings(
        coordinator.url,
        tmp_path / "ws",
        run_sandbox=True,
        agent_command=f"{sys.executable} {script}",
    )
    agent = await start_daemon(settings)
    try:
        async with admin(coordinator.url) as api:

            async def registered() -> dict[str, object] | None:
                answer = await api.get("/api/v1/agents/agent-1")
                return answer.json() if answer.status_code == 200 else None

            row = await eventually(registered, timeout=20, interval=0.1)
            assert row["status"] == "maintenance"
            reason = row["configuration"]["not_ready_reason"]  # type: ignore[index]
            assert "uid map: Permission denied" in reason and "canary" in reason
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
            await asyncio.sleep(2.5)  # several sweeps and heartbeats
            task = (await api.get(f"/api/v1/tasks/{task_id}")).json()
            assert task["status"] == "queued" and task["attempts"] == 0
            assert (await api.get(f"/api/v1/tasks/{task_id}/runs")).json() == []
        async with agent.client() as client:
            status = (await client.get("/status")).json()
            assert status["ready"] is False and status["sandbox"] == "on"
            assert "Permission denied" in status["not_ready_reason"]
            metrics = (await client.get("/metrics")).text
            assert 'claude_agent_ready{agent_id="agent-1"} 0.0' in metrics
    finally:
        await agent.stop()
