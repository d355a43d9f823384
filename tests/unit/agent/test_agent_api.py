"""The agent's HTTP API: authentication, idempotency, 409/503, cancel, status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_cluster.agent.api import create_agent_app
from claude_cluster.agent.pool import JobPool
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import ExecuteTaskRequest, RunResult

SECRET = "agent-secret-0123456789abcdef"
pytestmark = pytest.mark.timeout(20)


@dataclass
class Identity:
    agent_id: str = "agent-t"
    secret: str = SECRET
    started_at: float = field(default_factory=time.monotonic)
    registered: bool = True
    sandbox: str = "on"


class BlockingJobRunner:
    """Runs until released; records what it ran."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[int] = []
        self.cancelled: list[int] = []

    async def run(self, request: ExecuteTaskRequest, reporter: RunReporter) -> RunResult:
        self.started.append(request.run_id)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.run_id)
            return RunResult(succeeded=False, error_category=ErrorCategory.CANCELLED)
        return RunResult(succeeded=True)


class SilentReporter(RunReporter):
    """Keeps everything; delivers nothing."""

    def __init__(self, run_id: int) -> None:
        super().__init__(None, run_id)  # type: ignore[arg-type]
        self.results: list[RunResult] = []

    def start(self) -> None:
        pass

    def result(self, result: RunResult) -> None:
        self.results.append(result)

    async def finish(self, timeout: float | None = None) -> bool:
        return True


@pytest.fixture
def job_runner() -> BlockingJobRunner:
    return BlockingJobRunner()


@pytest.fixture
def pool(job_runner: BlockingJobRunner) -> JobPool:
    return JobPool(job_runner, SilentReporter, capacity=2, agent_id="agent-t")  # type: ignore[arg-type]


@pytest.fixture
async def client(pool: JobPool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_agent_app(pool, Identity())
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://agent", headers=headers
    ) as c:
        yield c
    await pool.close()


def body(run_id: int, task_id: int, **kw: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "task_id": task_id,
        "title": "t",
        "github_repository": "/tmp/repo",
        "github_issue_number": 1,
        "repository_url": "/tmp/repo",
        **kw,
    }


async def test_health_and_metrics_need_no_secret(client: httpx.AsyncClient) -> None:
    bare = {"Authorization": ""}
    health = await client.get("/health", headers=bare)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    metrics = await client.get("/metrics", headers=bare)
    assert metrics.status_code == 200 and "claude_agent_tasks_completed_total" in metrics.text


@pytest.mark.parametrize("header", ["", "Bearer wrong-secret", f"Basic {SECRET}", SECRET])
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/status"), ("POST", "/execute_task"), ("POST", "/cancel_task/1")],
)
async def test_every_other_call_needs_the_secret(
    client: httpx.AsyncClient, method: str, path: str, header: str
) -> None:
    response = await client.request(
        method, path, headers={"Authorization": header}, json=body(1, 1)
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_execute_is_idempotent_on_the_run_id(
    client: httpx.AsyncClient, job_runner: BlockingJobRunner
) -> None:
    first = await client.post("/execute_task", json=body(10, 1))
    assert first.status_code == 202 and first.json() == {
        "run_id": 10,
        "accepted": True,
        "duplicate": False,
    }
    again = await client.post("/execute_task", json=body(10, 1))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    await asyncio.sleep(0)
    assert job_runner.started == [10]


async def test_another_run_of_a_running_task_is_a_conflict(client: httpx.AsyncClient) -> None:
    assert (await client.post("/execute_task", json=body(10, 1))).status_code == 202
    assert (await client.post("/execute_task", json=body(11, 1))).status_code == 409


async def test_full_and_draining_are_503(client: httpx.AsyncClient, pool: JobPool) -> None:
    assert (await client.post("/execute_task", json=body(1, 1))).status_code == 202
    assert (await client.post("/execute_task", json=body(2, 2))).status_code == 202
    full = await client.post("/execute_task", json=body(3, 3))
    assert full.status_code == 503 and "slot" in full.json()["detail"]
    pool.drain()
    draining = await client.post("/execute_task", json=body(4, 4))
    assert draining.status_code == 503 and "draining" in draining.json()["detail"]


async def test_a_finished_run_sent_again_is_still_a_duplicate(
    client: httpx.AsyncClient, pool: JobPool, job_runner: BlockingJobRunner
) -> None:
    assert (await client.post("/execute_task", json=body(5, 1))).status_code == 202
    job_runner.release.set()
    assert await pool.wait_idle(5)
    assert (await client.post("/execute_task", json=body(5, 1))).status_code == 200
    assert job_runner.started == [5]


async def test_cancel_stops_the_run_and_reports_cancelled(
    client: httpx.AsyncClient, pool: JobPool, job_runner: BlockingJobRunner
) -> None:
    assert (await client.post("/execute_task", json=body(10, 4))).status_code == 202
    job = pool.jobs[10]
    await asyncio.sleep(0.01)
    response = await client.post("/cancel_task/4")
    assert response.status_code == 200 and response.json()["run_id"] == 10
    assert await pool.wait_idle(5)
    assert job_runner.cancelled == [10]
    reporter = job.reporter
    assert isinstance(reporter, SilentReporter)
    assert reporter.results[0].error_category == ErrorCategory.CANCELLED
    assert (await client.post("/cancel_task/4")).status_code == 404


async def test_status_lists_the_runs_and_the_load(client: httpx.AsyncClient) -> None:
    await client.post("/execute_task", json=body(10, 4))
    status = (await client.get("/status")).json()
    assert status["agent_id"] == "agent-t" and status["capacity"] == 2
    assert status["active"] == 1 and status["load"] == 0.5 and status["draining"] is False
    assert [run["run_id"] for run in status["runs"]] == [10]
    assert status["version"]


async def test_status_of_an_agent_with_run_sandbox_off_says_off(tmp_path: Path) -> None:
    """The daemon behind the API, as `RUN_SANDBOX=off` configures it (nothing started)."""
    from claude_cluster.agent.daemon import AgentDaemon
    from tests.support.agents import agent_settings

    settings = agent_settings("http://127.0.0.1:9", tmp_path / "ws", run_sandbox="off")
    assert settings.public_configuration()["sandbox"] == "off", "what the coordinator is told"
    daemon = AgentDaemon(settings)
    sandbox = daemon.job_runner.config.sandbox
    assert sandbox is None or not sandbox.enabled, "its runs are unconfined"
    transport = httpx.ASGITransport(app=daemon.app)
    headers = {"Authorization": f"Bearer {settings.agent_secret}"}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://agent", headers=headers
        ) as c:
            status = (await c.get("/status")).json()
        assert status["sandbox"] == "off" and status["agent_id"] == settings.agent_id
    finally:
        await daemon.pool.close()
