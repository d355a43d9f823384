"""The agent daemon against the real coordinator, with the ``command`` runner.

The daemon runs in the test's event loop (the coordinator in a thread); the signal tests
run it as a real process (``python -m claude_cluster.agent``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_cluster.agent.config import AgentSettings
from claude_cluster.agent.coordinator_client import CoordinatorClient
from claude_cluster.agent.registration import RegistrationConfig
from claude_cluster.agent.reporter import ReporterConfig
from claude_cluster.coordinator.app import create_app
from tests.conftest import REGISTRATION_TOKEN, RunningCoordinator, coordinator_settings
from tests.support.agents import (
    CALC_FIXED,
    admin,
    agent_env,
    agent_process,
    agent_settings,
    branch_file,
    fixer_script,
    make_origin,
    pid_alive,
    start_daemon,
)
from tests.support.servers import ServerThread, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

StartCoordinator = Callable[..., RunningCoordinator]
ALL_SPECIALTIES = ["backend", "frontend", "testing", "devops", "general"]


def task_body(origin: Path, **kw: Any) -> dict[str, Any]:
    return {
        "title": "add() subtracts",
        "description": "add(2, 3) returns -1 instead of 5",
        "github_repository": str(origin),
        "github_issue_number": 3,
        **kw,
    }


def command_settings(url: str, tmp_path: Path, script: Path, **overrides: Any) -> AgentSettings:
    """An in-loop agent for any specialty whose ``command`` runner is ``script``."""
    return agent_settings(
        url,
        tmp_path / "ws",
        agent_command=f"{sys.executable} {script}",
        specialties=ALL_SPECIALTIES,
        **overrides,
    )


def command_env(url: str, tmp_path: Path, script: Path, **extra: str) -> dict[str, str]:
    """The same agent as a process: its environment."""
    return agent_env(
        url,
        tmp_path / "ws",
        free_port(),
        AGENT_RUNNER="command",
        AGENT_COMMAND=f"{sys.executable} {script}",
        AGENT_SPECIALTY=",".join(ALL_SPECIALTIES),
        # these tests watch the runner's pid from the host (a sandbox has its own pids)
        RUN_SANDBOX="off",
        **extra,
    )


def slow_fixer(tmp_path: Path, sleep: float) -> tuple[Path, Path, Path]:
    """The remote, a fixer script that sleeps ``sleep`` seconds first, and its pid file."""
    origin = make_origin(tmp_path / "remote")
    pid_file = tmp_path / "runner.pid"
    return origin, fixer_script(tmp_path / "bin", sleep=sleep, pid_file=pid_file), pid_file


async def submit_and_wait_for_runner(api: httpx.AsyncClient, origin: Path, pid_file: Path) -> int:
    """Submit the task and wait until its runner has started; the task's id."""
    task_id = int((await api.post("/api/v1/tasks", json=task_body(origin))).json()["id"])
    await eventually(lambda: _async(pid_file.exists()), timeout=20)
    return task_id


async def task_status(api: httpx.AsyncClient, task_id: int) -> str:
    return str((await api.get(f"/api/v1/tasks/{task_id}")).json()["status"])


async def wait_status(
    api: httpx.AsyncClient, task_id: int, wanted: set[str], timeout: float = 30
) -> str:
    async def probe() -> str | None:
        status = await task_status(api, task_id)
        return status if status in wanted else None

    return await eventually(probe, timeout=timeout, interval=0.1)


async def runs_of(api: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return sorted(runs, key=lambda r: r["attempt"])


class LossyTransport(httpx.AsyncBaseTransport):
    """Forwards every request, but loses the answer of every other report: the
    coordinator has stored it, the agent does not know and sends it again."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.lost = 0
        self._count = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.url.path.endswith(("/events", "/result")):
            self._count += 1
            if self._count % 2 == 1:
                await response.aread()
                self.lost += 1
                raise httpx.ReadError("answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_task_runs_and_its_reports_survive_lost_answers(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    coordinator = start_coordinator(heartbeat_interval=0.5)
    origin = make_origin(tmp_path / "remote")
    script = fixer_script(tmp_path / "bin")
    settings = command_settings(coordinator.url, tmp_path, script)
    lossy = LossyTransport()
    client = CoordinatorClient(
        coordinator.url, registration_token=REGISTRATION_TOKEN, transport=lossy
    )
    agent = await start_daemon(
        settings,
        client=client,
        reporter_config=ReporterConfig(flush_interval=0.1, retry_initial=0.05),
    )
    try:
        async with admin(coordinator.url) as api:
            created = await api.post("/api/v1/tasks", json=task_body(origin))
            task_id = created.json()["id"]
            assert await wait_status(api, task_id, {"completed", "failed"}) == "completed"

            [run] = await runs_of(api, task_id)
            assert run["status"] == "succeeded" and run["agent_id"] == "agent-1"
            assert (run["tests_passed"], run["tests_failed"], run["tests_ok"]) == (2, 0, True)
            assert run["cost_usd"] == pytest.approx(0.0123)
            assert (run["input_tokens"], run["output_tokens"], run["num_turns"]) == (1200, 345, 3)
            assert run["session_id"] == "sess-1"
            assert branch_file(origin, run["branch"], "calc.py") == CALC_FIXED

            events = (await api.get(f"/api/v1/tasks/{task_id}/events")).json()
            seqs = [
                e["seq"]
                for e in events
                if e.get("run_id") == run["id"] and e.get("seq") is not None
            ]
            assert seqs == list(range(len(seqs))) and len(seqs) > 5, seqs
            assert lossy.lost >= 2  # at least one batch and the result were sent twice

            agent_row = (await api.get("/api/v1/agents/agent-1")).json()
            assert agent_row["status"] == "idle" and agent_row["last_heartbeat"]
    finally:
        assert await agent.stop() == 0


async def test_the_agent_registers_when_the_coordinator_starts_late(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = agent_settings(url, tmp_path / "ws")
    agent = await start_daemon(
        settings, registration_config=RegistrationConfig(initial_delay=0.2, max_delay=0.5)
    )
    server: ServerThread | None = None
    try:
        await asyncio.sleep(1.0)
        assert not agent.daemon.registered
        async with agent.client() as c:
            assert (await c.get("/status")).json()["registered"] is False
        server = ServerThread(create_app(coordinator_settings(db_url)), port=port)
        await asyncio.to_thread(server.start)
        await eventually(lambda: _async(agent.daemon.registered), timeout=10)
        async with admin(url) as api:
            row = await eventually(lambda: _heartbeat_of(api, "agent-1"), timeout=10)
            assert row["url"] == settings.url
    finally:
        assert await agent.stop() == 0
        if server is not None:
            await asyncio.to_thread(server.stop)


async def _async(value: Any) -> Any:
    return value


async def _heartbeat_of(api: httpx.AsyncClient, agent_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/api/v1/agents/{agent_id}")
    row: dict[str, Any] = response.json()
    return row if response.status_code == 200 and row.get("last_heartbeat") else None


async def test_cancelling_the_task_stops_the_process(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    coordinator = start_coordinator(heartbeat_interval=0.5)
    origin, script, pid_file = slow_fixer(tmp_path, sleep=60)
    agent = await start_daemon(command_settings(coordinator.url, tmp_path, script))
    try:
        async with admin(coordinator.url) as api:
            task_id = await submit_and_wait_for_runner(api, origin, pid_file)
            pid = int(pid_file.read_text())
            assert pid_alive(pid)
            assert (await api.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
            await eventually(lambda: _async(not pid_alive(pid)), timeout=15)
            await eventually(lambda: _async(not agent.daemon.pool.jobs), timeout=15)
            [run] = await runs_of(api, task_id)
            assert run["status"] == "cancelled"
    finally:
        assert await agent.stop() == 0


async def test_sigterm_drains_then_exits(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    coordinator = start_coordinator(heartbeat_interval=0.5)
    origin, script, pid_file = slow_fixer(tmp_path, sleep=2)
    secret = "drain-test-secret-0123456789"
    env = command_env(coordinator.url, tmp_path, script, AGENT_SECRET=secret)
    with agent_process(env, log=tmp_path / "agent.log") as agent:
        async with admin(coordinator.url) as api:
            await eventually(lambda: _heartbeat_of(api, "agent-1"), timeout=15)
            task_id = await submit_and_wait_for_runner(api, origin, pid_file)
            agent.signal(signal.SIGTERM)
            async with httpx.AsyncClient(
                base_url=agent.url, headers={"Authorization": f"Bearer {secret}"}
            ) as c:
                refused = await eventually(
                    lambda: _refused(c), timeout=5
                )  # new work is refused while the run goes on
                assert refused.status_code == 503
            code = await asyncio.to_thread(agent.proc.wait, 30)
            assert code == 0, agent.output()
            assert await task_status(api, task_id) == "completed"
            [run] = await runs_of(api, task_id)
            assert run["status"] == "succeeded" and run["tests_passed"] == 2
            agent_row = (await api.get("/api/v1/agents/agent-1")).json()
            assert agent_row["status"] == "maintenance"
        assert '"agent_draining"' in agent.output()


async def _refused(client: httpx.AsyncClient) -> httpx.Response | None:
    body = {
        "run_id": 999_999,
        "task_id": 999_999,
        "title": "t",
        "github_repository": "/x",
        "github_issue_number": 1,
        "repository_url": "/x",
    }
    response = await client.post("/execute_task", json=body)
    return response if response.status_code == 503 else None


async def test_a_second_sigterm_stops_the_runs_and_hands_them_back(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    coordinator = start_coordinator(heartbeat_interval=0.5, retry_base_seconds=30)
    origin, script, pid_file = slow_fixer(tmp_path, sleep=120)
    env = command_env(coordinator.url, tmp_path, script)
    with agent_process(env, log=tmp_path / "agent.log") as agent:
        async with admin(coordinator.url) as api:
            task_id = await submit_and_wait_for_runner(api, origin, pid_file)
            pid = int(pid_file.read_text())
            agent.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            agent.signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.to_thread(agent.proc.wait, 30)
            assert code == 0, agent.output()
            assert time.monotonic() - started < 15
            assert not pid_alive(pid), "the runner outlived the daemon"
            [run] = await runs_of(api, task_id)
            assert run["status"] == "failed" and run["error_category"] == "lost"
            assert await task_status(api, task_id) == "queued"


async def test_an_agent_keeps_its_identity_and_nobody_else_can_take_it(
    coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    url = coordinator.url
    first = await start_daemon(agent_settings(url, tmp_path / "ws"))
    await eventually(lambda: _async(first.daemon.registered), timeout=10)
    token_file = tmp_path / "ws" / "state" / "agent-token"
    token = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ws" / "state").stat().st_mode & 0o777 == 0o700
    assert await first.stop() == 0

    # restarted with its state: it registers again with its own token, which stays valid
    again = await start_daemon(agent_settings(url, tmp_path / "ws"))
    await eventually(lambda: _async(again.daemon.registered), timeout=10)
    assert again.daemon.registered_as is not None
    assert again.daemon.registered_as.created is False
    assert token_file.read_text().strip() == token
    assert await again.stop() == 0

    # another host claiming the same id with only the registration token is refused (403)
    impostor = await start_daemon(agent_settings(url, tmp_path / "other"))
    assert await asyncio.wait_for(impostor.task, 20) == 1
    assert not (tmp_path / "other" / "state" / "agent-token").exists()
    async with admin(url) as api:
        row = (await api.get("/api/v1/agents/agent-1")).json()
        assert row["url"] == again.daemon.settings.url  # not the impostor's

        # the host was rebuilt for real: an admin resets the id, and the new host enrols
        assert (await api.post("/api/v1/agents/agent-1/reset")).status_code == 200
    rebuilt = await start_daemon(agent_settings(url, tmp_path / "other"))
    await eventually(lambda: _async(rebuilt.daemon.registered), timeout=10)
    assert (tmp_path / "other" / "state" / "agent-token").read_text().strip() != token
    assert await rebuilt.stop() == 0
