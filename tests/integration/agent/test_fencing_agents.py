"""Fencing at delivery with real agent daemons (SPEC §5): runs go on while the coordinator
is away and deliver once it answers; a partitioned agent whose run was handed to another
agent is refused at delivery and discards its result, so each task is delivered once.

The coordinator runs under uvicorn on a socket (SQLite and PostgreSQL), the agents are real
``AgentDaemon``s serving HTTP in the test's loop, their runner a real script, their
repository a real bare git remote.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_cluster.agent.reporter import ReporterConfig, RunReporter
from claude_cluster.coordinator.app import create_app
from tests.conftest import RunningCoordinator, coordinator_settings
from tests.support.agents import (
    CALC_FIXED,
    admin,
    agent_settings,
    branch_file,
    fixer_script,
    git,
    make_origin,
    start_daemon,
)
from tests.support.cut_proxy import CutProxy
from tests.support.servers import ServerThread, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

StartCoordinator = Callable[..., RunningCoordinator]
ALL_SPECIALTIES = ["backend", "frontend", "testing", "devops", "general"]
FAST_REPORTS = ReporterConfig(flush_interval=0.1, retry_initial=0.05)


def task_body(origin: Path) -> dict[str, Any]:
    return {
        "title": "add() subtracts",
        "description": "add(2, 3) returns -1 instead of 5",
        "github_repository": str(origin),
        "github_issue_number": 3,
    }


def settings_for(url: str, workspace: Path, script: Path, agent_id: str) -> Any:
    return agent_settings(
        url,
        workspace,
        agent_id=agent_id,
        agent_command=f"{sys.executable} {script}",
        specialties=ALL_SPECIALTIES,
        heartbeat_interval=0.3,
    )


async def runs_of(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return sorted(runs, key=lambda r: r["attempt"])


async def events_of(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/events")).json()
    return events


async def status_in(api: httpx.AsyncClient, task_id: int, wanted: set[str]) -> str | None:
    status = str((await api.get(f"/api/v1/tasks/{task_id}")).json()["status"])
    return status if status in wanted else None


async def _async(value: Any) -> Any:
    return value


def reported_kinds(reporter: RunReporter) -> list[str]:
    """The kinds of the events ``reporter`` is given from now on (sent or not)."""
    kinds: list[str] = []
    report = reporter.event

    def event(kind: str, *args: Any, **kwargs: Any) -> None:
        kinds.append(kind)
        report(kind, *args, **kwargs)

    reporter.event = event  # type: ignore[method-assign]
    return kinds


async def test_a_coordinator_outage_longer_than_a_lease_loses_no_run(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    settings = coordinator_settings(
        db_url, port=port, heartbeat_interval=0.3, run_lease_seconds=2.0
    )
    server = ServerThread(create_app(settings), port=port).start()
    origin = make_origin(tmp_path / "remote")
    pid_file = tmp_path / "runner.pid"
    script = fixer_script(tmp_path / "bin", sleep=1.0, pid_file=pid_file)
    agent = await start_daemon(
        settings_for(server.url, tmp_path / "ws", script, "agent-1"), reporter_config=FAST_REPORTS
    )
    try:
        async with admin(server.url) as api:
            created = await api.post("/api/v1/tasks", json=task_body(origin))
            task_id = int(created.json()["id"])
            await eventually(lambda: _async(pid_file.exists()), timeout=20)
            job = next(iter(agent.daemon.pool.jobs.values()))
            said = reported_kinds(job.reporter)
            await asyncio.to_thread(server.stop)  # a restart with a migration, say
            # the run finishes its work and waits for a confirmation, past the lease
            await eventually(lambda: _async("delivery_waiting" in said), timeout=30)
            await asyncio.sleep(settings.run_lease_seconds + 1.0)
            assert job.stop_cause is None  # nothing stopped it
            server = ServerThread(create_app(settings), port=port).start()
            done = await eventually(
                lambda: status_in(api, task_id, {"completed", "failed"}), timeout=40
            )
            assert done == "completed"
            [run] = await runs_of(api, task_id)
            assert run["status"] == "succeeded" and run["delivery_confirmed_at"]
            assert branch_file(origin, run["branch"], "calc.py") == CALC_FIXED
            kinds = [e["kind"] for e in await events_of(api, task_id)]
            assert "delivery_waiting" in kinds and kinds.count("delivered") == 1
    finally:
        assert await agent.stop() == 0
        server.stop()


async def test_a_partitioned_agent_is_refused_at_delivery_and_the_task_is_delivered_once(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    coordinator = start_coordinator(heartbeat_interval=0.3, run_lease_seconds=2.0)
    origin = make_origin(tmp_path / "remote")
    pid_file = tmp_path / "runner.pid"
    script = fixer_script(tmp_path / "bin", sleep=2.0, pid_file=pid_file)
    async with CutProxy(coordinator.url) as road:
        cut_off = await start_daemon(
            settings_for(road.url, tmp_path / "ws-a", script, "agent-a"),
            reporter_config=FAST_REPORTS,
        )
        other = None
        try:
            async with admin(coordinator.url) as api:
                created = await api.post("/api/v1/tasks", json=task_body(origin))
                task_id = int(created.json()["id"])
                await eventually(lambda: _async(pid_file.exists()), timeout=20)
                road.cut = True  # agent-a is partitioned from the coordinator
                other = await start_daemon(
                    settings_for(coordinator.url, tmp_path / "ws-b", script, "agent-b"),
                    reporter_config=FAST_REPORTS,
                )
                # after the lease the task runs on agent-b, which delivers it
                done = await eventually(
                    lambda: status_in(api, task_id, {"completed", "failed"}), timeout=60
                )
                assert done == "completed"
                # agent-a finished its work meanwhile and keeps asking to deliver
                assert cut_off.daemon.pool.jobs, "agent-a still holds its result"
                assert any(p.endswith("/confirm-delivery") for _, p, _ in road.seen)
                # the partition heals for everything but the heartbeat, so the answer to
                # the confirmation is what fences the old run
                road.blocked = ("/api/v1/agents/",)
                road.cut = False
                await eventually(lambda: _async(not cut_off.daemon.pool.jobs), timeout=40)
                road.blocked = ()

                runs = await runs_of(api, task_id)
                assert [(r["agent_id"], r["status"]) for r in runs] == [
                    ("agent-a", "lost"),
                    ("agent-b", "succeeded"),
                ]
                lost, won = runs
                assert won["id"] > lost["id"]  # the run id is the fencing token
                assert lost["delivery_confirmed_at"] is None
                events = await events_of(api, task_id)
                delivered = [e for e in events if e["kind"] == "delivered"]
                assert [e["run_id"] for e in delivered] == [won["id"]]
                [discarded] = [e for e in events if e["kind"] == "delivery_discarded"]
                assert discarded["run_id"] == lost["id"]
                assert discarded["details"]["reason"] == "refused"
                assert any(
                    status == 409 and p.endswith("/confirm-delivery") for _, p, status in road.seen
                )
                branch = won["branch"]
                assert branch_file(origin, branch, "calc.py") == CALC_FIXED
                assert git(origin, "rev-list", "--count", f"main..{branch}") == "1"
        finally:
            assert await cut_off.stop() == 0
            if other is not None:
                assert await other.stop() == 0
