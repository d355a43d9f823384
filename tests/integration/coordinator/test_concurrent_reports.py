"""An agent's calls arriving all at once (a coordinator back from a pause works through
every heartbeat and report its agents retried meanwhile) are all answered: no deadlock
between heartbeats that touch the same runs, or between them and run reports.

Real coordinator on SQLite and PostgreSQL, a simulated agent that is a real HTTP server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import RunningCoordinator
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


async def test_a_pile_of_heartbeats_and_reports_is_answered_without_a_deadlock(
    coordinator: RunningCoordinator,
) -> None:
    async with (
        SimAgents(coordinator.url, heartbeat_interval=60) as sims,
        coordinator.async_client() as api,
    ):
        agent = await sims.add("a1", behaviour="hold", capacity=4)
        task_ids = []
        for issue in range(4):
            response = await api.post(
                "/api/v1/tasks",
                json={
                    "title": f"Issue {issue}",
                    "description": "something to do",
                    "github_repository": "acme/app",
                    "github_issue_number": issue + 1,
                },
            )
            assert response.status_code == 201, response.text
            task_ids.append(int(response.json()["id"]))

        async def all_held() -> bool:
            return len(agent.held) == 4

        await eventually(all_held)
        run_ids = sorted(agent.held)

        async def report(run_id: int, batch: int) -> None:
            await sims.report(
                "a1",
                run_id,
                [{"kind": "log", "message": f"line {batch}.{i}"} for i in range(3)],
                first_seq=batch * 3,
            )

        calls: list[Any] = [sims.heartbeat(agent) for _ in range(40)]
        calls += [report(run_id, batch) for run_id in run_ids for batch in range(10)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, [_described(f) for f in failures]
        for task_id in task_ids:
            events = (await api.get(f"/api/v1/tasks/{task_id}/events")).json()
            assert len([e for e in events if e["kind"] == "log"]) == 30


def _described(failure: BaseException) -> str:
    if isinstance(failure, httpx.HTTPStatusError):
        return f"HTTP {failure.response.status_code}: {failure.response.text[:200]}"
    return f"{type(failure).__name__}: {failure}"
