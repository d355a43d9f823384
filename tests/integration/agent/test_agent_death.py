"""Faster death (SPEC §5): an agent process killed with ``kill -9`` refuses the probe the
coordinator sends when its heartbeat is late, so its run is lost and running on another
agent well before the lease; a frozen agent (SIGSTOP: its port still accepts, nothing
answers) is left to the lease.

Real coordinator (uvicorn, SQLite and PostgreSQL), real agent processes
(``python -m claude_cluster.agent``), default timing where it matters
(``HEARTBEAT_INTERVAL`` 10 s, ``SWEEP_INTERVAL`` 2 s, ``RUN_LEASE_SECONDS`` 30 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningCoordinator
from tests.support.agents import (
    AgentProcess,
    admin,
    agent_env,
    agent_process,
    fixer_script,
    make_origin,
)
from tests.support.servers import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

StartCoordinator = Callable[..., RunningCoordinator]


def task_body(origin: Path) -> dict[str, Any]:
    return {
        "title": "add() subtracts",
        "description": "add(2, 3) returns -1 instead of 5",
        "github_repository": str(origin),
        "github_issue_number": 3,
    }


@contextmanager
def agent(
    url: str, tmp_path: Path, name: str, *, heartbeat: str = "10"
) -> Iterator[tuple[AgentProcess, Path]]:
    """A real agent process whose runner sleeps 120 s (its pid in the returned file)."""
    pid_file = tmp_path / f"{name}.pid"
    script = fixer_script(tmp_path / f"bin-{name}", sleep=120, pid_file=pid_file)
    env = agent_env(
        url,
        tmp_path / f"ws-{name}",
        free_port(),
        AGENT_ID=name,
        AGENT_RUNNER="command",
        AGENT_COMMAND=f"{sys.executable} {script}",
        AGENT_SPECIALTY="general,backend,testing",
        HEARTBEAT_INTERVAL=heartbeat,
        RUN_SANDBOX="off",
    )
    try:
        with agent_process(env, log=tmp_path / f"{name}.log") as proc:
            yield proc, pid_file
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the orphaned runner


async def runs_of(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return sorted(runs, key=lambda r: r["attempt"])


async def running_on(api: httpx.AsyncClient, task_id: int, agent_id: str) -> bool:
    return any(
        r["agent_id"] == agent_id and r["status"] == "running" for r in await runs_of(api, task_id)
    )


async def last_heartbeat(api: httpx.AsyncClient, agent_id: str) -> str | None:
    response = await api.get(f"/api/v1/agents/{agent_id}")
    return response.json().get("last_heartbeat") if response.status_code == 200 else None


async def _async(value: Any) -> Any:
    return value


async def test_a_killed_agents_task_runs_elsewhere_well_before_the_lease(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    # the defaults that matter (conftest shortens the sweep for other tests)
    coordinator = start_coordinator(sweep_interval=2.0, heartbeat_interval=10.0)
    lease = coordinator.settings.run_lease_seconds
    origin = make_origin(tmp_path / "remote")
    async with admin(coordinator.url) as api:
        with agent(coordinator.url, tmp_path, "agent-a") as (a, a_pid):
            task_id = int((await api.post("/api/v1/tasks", json=task_body(origin))).json()["id"])
            await eventually(lambda: _async(a_pid.exists()), timeout=30)
            await eventually(lambda: running_on(api, task_id, "agent-a"), timeout=10)
            with agent(coordinator.url, tmp_path, "agent-b") as (_b, b_pid):
                await eventually(lambda: last_heartbeat(api, "agent-b"), timeout=10)
                # the worst moment: just after a heartbeat, the longest silence follows
                seen = await last_heartbeat(api, "agent-a")

                async def next_beat() -> bool:
                    return await last_heartbeat(api, "agent-a") != seen

                await eventually(next_beat, timeout=15, interval=0.02)
                a.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await eventually(lambda: running_on(api, task_id, "agent-b"), timeout=lease)
                elapsed = time.monotonic() - killed
                print(f"\nkill -9 → running on another agent: {elapsed:.1f} s (lease {lease:g} s)")
                assert elapsed < lease, elapsed
                await eventually(lambda: _async(b_pid.exists()), timeout=10)
                lost, moved = await runs_of(api, task_id)
                assert (lost["agent_id"], lost["status"], lost["error_category"]) == (
                    "agent-a",
                    "lost",
                    "lost",
                )
                assert "refused the connection" in lost["message"]
                assert moved["agent_id"] == "agent-b"
                row = (await api.get("/api/v1/agents/agent-a")).json()
                assert row["status"] == "offline"
                assert (await api.delete(f"/api/v1/tasks/{task_id}")).status_code == 200


async def test_a_frozen_agent_is_left_to_the_lease(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    # a lease shorter than two probe timeouts: the probes that hang must not keep the
    # reconciler in its stall grace (they once did, and the run was never lost)
    coordinator = start_coordinator(
        sweep_interval=0.5, heartbeat_interval=1.0, run_lease_seconds=3.0, agent_call_timeout=2.0
    )
    origin = make_origin(tmp_path / "remote")
    async with admin(coordinator.url) as api:
        with agent(coordinator.url, tmp_path, "agent-a", heartbeat="1") as (a, a_pid):
            task_id = int((await api.post("/api/v1/tasks", json=task_body(origin))).json()["id"])
            await eventually(lambda: _async(a_pid.exists()), timeout=30)
            await eventually(lambda: running_on(api, task_id, "agent-a"), timeout=10)
            os.kill(a.proc.pid, signal.SIGSTOP)  # its port accepts, nothing answers
            stopped = time.monotonic()
            try:

                async def lost() -> bool:
                    return (await runs_of(api, task_id))[0]["status"] == "lost"

                await eventually(lost, timeout=15)
                elapsed = time.monotonic() - stopped
                print(f"\nfrozen agent → run lost after {elapsed:.1f} s (lease 3 s)")
                run = (await runs_of(api, task_id))[0]
                # measured from the run's last sign of life (a heartbeat up to 1 s before
                # the stop), not from the stop: a probe that timed out (2 s) must not end it
                silent = datetime.fromisoformat(run["ended_at"]) - datetime.fromisoformat(
                    run["last_seen_at"]
                )
                assert silent.total_seconds() >= 3.0, "a probe that timed out lost the run"
                assert "lease" in run["message"]
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            assert (await api.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
