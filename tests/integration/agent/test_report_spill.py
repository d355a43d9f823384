"""An agent's unsent reports are bounded in memory: while the coordinator is down, a run's
events beyond the limit go to a spill file in the agent's state directory (0600); when the
coordinator is back, every event arrives, in order, and the file is gone. Reports an agent
could not deliver before it stopped are sent by its next start.

The agent daemon runs in the test's event loop with a runner that floods events; the
coordinator is the real app on a real port, stopped and started again on the same
database."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_cluster.agent import daemon as daemon_module
from claude_cluster.agent.reporter import ReporterConfig
from claude_cluster.coordinator.app import create_app
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.runners import RunnerEvent, RunnerOutcome, RunSpec
from tests.conftest import coordinator_settings
from tests.support.agents import admin, agent_settings, make_origin, start_daemon
from tests.support.servers import ServerThread, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

FLOOD = 3000
MEMORY = 200


class FloodRunner:
    """Waits for ``go``, reports ``count`` events, then ends the run without changes."""

    name = "flood"

    def __init__(self, count: int) -> None:
        self.count = count
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.flooded = asyncio.Event()
        self.release = asyncio.Event()

    async def run(
        self, spec: RunSpec, on_event: Callable[[RunnerEvent], Awaitable[None]]
    ) -> RunnerOutcome:
        self.started.set()
        await self.go.wait()
        for i in range(self.count):
            await on_event(RunnerEvent("output", f"flood {i}", {"i": i}))
        self.flooded.set()
        await self.release.wait()
        return RunnerOutcome(
            succeeded=False, error_category=ErrorCategory.NO_CHANGES, message="nothing to do"
        )


def _task(origin: Path) -> dict[str, Any]:
    return {
        "title": "flood",
        "description": "reports a lot",
        "github_repository": str(origin),
        "github_issue_number": 9,
    }


async def _flood_indexes(api: httpx.AsyncClient, task_id: int, run_id: int) -> list[int]:
    events: list[dict[str, Any]] = []
    while page := (
        await api.get(
            f"/api/v1/tasks/{task_id}/events", params={"after": events[-1]["id"] if events else 0}
        )
    ).json():
        events += page
    mine = [e for e in events if e.get("run_id") == run_id and e.get("seq") is not None]
    seqs = [e["seq"] for e in mine]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "stored once, in order"
    return [int(e["message"].split()[1]) for e in mine if e["message"].startswith("flood ")]


async def _all_events(api: httpx.AsyncClient, task_id: int, run_id: int) -> list[int] | None:
    """The run's flood indexes once every one of them is stored."""
    indexes = await _flood_indexes(api, task_id, run_id)
    return indexes if len(indexes) == FLOOD else None


def _start(db_url: str, port: int) -> ServerThread:
    settings = coordinator_settings(db_url, heartbeat_interval=0.5, run_lease_seconds=60)
    return ServerThread(create_app(settings), port=port).start()


async def _submit(url: str, origin: Path, runner: FloodRunner) -> tuple[int, int]:
    async with admin(url) as api:
        task_id = int((await api.post("/api/v1/tasks", json=_task(origin))).json()["id"])
        await asyncio.wait_for(runner.started.wait(), 20)
        [run] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
        return task_id, int(run["id"])


async def test_a_coordinator_outage_spills_reports_to_disk_and_loses_none(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(db_url, port)
    origin = make_origin(tmp_path / "remote")
    runner = FloodRunner(FLOOD)
    settings = agent_settings(url, tmp_path / "ws", specialties=["general", "testing"])
    config = ReporterConfig(
        flush_interval=0.05, retry_initial=0.05, retry_max=0.3, memory_events=MEMORY
    )
    agent = await start_daemon(settings, runner=runner, reporter_config=config)
    try:
        await eventually(lambda: _async(agent.daemon.registered), timeout=20)
        task_id, run_id = await _submit(url, origin, runner)
        await asyncio.to_thread(server.stop)  # the coordinator is down

        runner.go.set()
        await asyncio.wait_for(runner.flooded.wait(), 30)
        reporter = agent.daemon.pool.jobs[run_id].reporter
        spill = settings.state_dir / "reports" / f"{run_id}.jsonl"
        assert reporter.in_memory <= MEMORY, "memory stays bounded"
        assert reporter.spilled >= FLOOD - MEMORY
        assert stat.S_IMODE(spill.stat().st_mode) == 0o600
        print(
            f"{FLOOD} events during the outage: {reporter.in_memory} in memory, "
            f"{reporter.spilled} spilled ({spill.stat().st_size} bytes)"
        )
        runner.release.set()  # the result is queued behind them

        server = _start(db_url, port)  # the coordinator is back
        started = time.monotonic()
        async with admin(url) as api:
            indexes = await eventually(
                lambda: _all_events(api, task_id, run_id), timeout=60, interval=0.5
            )
            assert indexes == list(range(FLOOD)), "every event, in order"
            print(f"all delivered {time.monotonic() - started:.1f} s after the restart")

            async def run_ended() -> bool:
                run = (await api.get(f"/api/v1/runs/{run_id}")).json()
                return bool(run["status"] == "failed" and run["error_category"] == "no_changes")

            await eventually(run_ended, timeout=20)
        await eventually(lambda: _async(not spill.exists()), timeout=10)
    finally:
        runner.release.set()
        await agent.stop()
        server.stop()


async def test_reports_left_at_a_stop_are_sent_by_the_next_start(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "SHUTDOWN_GRACE", 1.0)
    monkeypatch.setattr(daemon_module, "KILL_GRACE", 1.0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(db_url, port)
    origin = make_origin(tmp_path / "remote")
    runner = FloodRunner(FLOOD)
    settings = agent_settings(url, tmp_path / "ws", specialties=["general", "testing"])
    config = ReporterConfig(
        flush_interval=0.05, retry_initial=0.05, retry_max=0.3, memory_events=MEMORY
    )
    agent = await start_daemon(settings, runner=runner, reporter_config=config)
    try:
        await eventually(lambda: _async(agent.daemon.registered), timeout=20)
        task_id, run_id = await _submit(url, origin, runner)
        await asyncio.to_thread(server.stop)
        runner.go.set()
        await asyncio.wait_for(runner.flooded.wait(), 30)
        agent.daemon.stop_ungracefully()  # reports cannot go out: kept on disk
        assert await asyncio.wait_for(agent.task, 30) == 0
        spill = settings.state_dir / "reports" / f"{run_id}.jsonl"
        assert spill.exists() and stat.S_IMODE(spill.stat().st_mode) == 0o600

        server = _start(db_url, port)
        # the coordinator hands the lost run's task out again: this runner ends it at once
        again = FloodRunner(0)
        again.go.set()
        again.release.set()
        agent = await start_daemon(settings, runner=again, reporter_config=config)
        async with admin(url) as api:
            indexes = await eventually(
                lambda: _all_events(api, task_id, run_id), timeout=60, interval=0.5
            )
            assert indexes == list(range(FLOOD))
        await eventually(lambda: _async(not spill.exists()), timeout=10)
    finally:
        runner.release.set()
        if not agent.task.done():
            await agent.stop()
        server.stop()


async def _async(value: Any) -> Any:
    return value
