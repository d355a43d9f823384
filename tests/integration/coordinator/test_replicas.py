"""Two coordinator processes on one PostgreSQL, fanned out through Redis, dispatch 400
tasks to simulated agents: every task runs exactly once."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from claude_cluster.coordinator.store.db import check_connection_budget
from tests.conftest import ADMIN_TOKEN
from tests.support import databases
from tests.support.processes import coordinator_env, coordinator_process, spawn_coordinator
from tests.support.servers import free_port
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

TASKS = 400  # bench/dispatch.py and bench/chaos.py run the thousands


@pytest.fixture
def pg_url(_pg_template: None) -> Iterator[str]:
    """Several coordinator processes need PostgreSQL (SQLite serves one process)."""
    name, url = databases.new_pg_database()
    try:
        yield url
    finally:
        databases.drop_pg_database(name)


async def test_two_coordinators_never_dispatch_a_task_twice(pg_url: str, tmp_path: Path) -> None:
    redis = "redis://127.0.0.1:6379/0"
    with (
        coordinator_process(pg_url, log=tmp_path / "a.log", REDIS_URL=redis) as proc_a,
        coordinator_process(pg_url, log=tmp_path / "b.log", REDIS_URL=redis) as proc_b,
    ):
        url_a, url_b = proc_a.url, proc_b.url
        async with SimAgents(url_a, heartbeat_interval=1.0) as sims:
            for i in range(10):
                await sims.add(f"sim-{i:02d}", capacity=5)
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with (
                httpx.AsyncClient(base_url=url_a, headers=headers, timeout=30) as a,
                httpx.AsyncClient(base_url=url_b, headers=headers, timeout=30) as b,
            ):

                async def submit(i: int) -> None:
                    client = a if i % 2 else b
                    response = await client.post(
                        "/api/v1/tasks",
                        json={
                            "title": f"task {i}",
                            "github_repository": "acme/app",
                            "github_issue_number": i + 1,
                            "requirements": [],
                        },
                    )
                    assert response.status_code == 201, response.text

                for start in range(0, TASKS, 50):
                    await asyncio.gather(*(submit(i) for i in range(start, start + 50)))

                async def all_done() -> bool:
                    status = (await a.get("/api/v1/queue/status")).json()
                    return bool(status["completed_tasks"] == TASKS)

                await eventually(all_done, timeout=120, interval=0.5)
                tasks = []
                for offset in range(0, TASKS, 1000):
                    tasks += (
                        await b.get("/api/v1/tasks", params={"limit": 1000, "offset": offset})
                    ).json()
                retried = [t["id"] for t in tasks if t["attempts"] > 1]
                earlier = [
                    run
                    for task_id in retried
                    for run in (await a.get(f"/api/v1/tasks/{task_id}/runs")).json()
                    if run["status"] != "succeeded"
                ]
        per_run = Counter(sims.all_received())
        per_task = Counter(body["task_id"] for a in sims.agents.values() for body in a.bodies)
    assert len(tasks) == TASKS
    assert {t["status"] for t in tasks} == {"completed"}
    assert len(per_task) == TASKS
    assert max(per_task.values()) == 1, "a task reached an agent twice"
    assert max(per_run.values()) == 1, "a run was pushed twice"
    # Under this load the simulated agents' server sometimes refuses a connection; such a
    # push never reached an agent, and only then may a task have had a second attempt.
    assert {(r["status"], r["error_category"]) for r in earlier} <= {("lost", "dispatch_failed")}


def test_workers_that_could_exhaust_postgresql_are_refused_at_start(
    pg_url: str, tmp_path: Path
) -> None:
    """4 workers x (60 + 20) connections is more than the server's 100: refused with the
    variables named, before a burst would turn the excess into 500s."""
    log = tmp_path / "coordinator.log"
    env = coordinator_env(pg_url, WORKERS="4", DATABASE_POOL_SIZE="60")
    proc = spawn_coordinator(env, log=log)
    assert proc.wait(timeout=60) == 2
    said = " ".join(log.read_text().split())
    assert "WORKERS (4) x (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW = 80) = 320" in said
    assert "more than PostgreSQL accepts (" in said


async def test_the_budget_check_leaves_an_unreachable_server_to_the_start() -> None:
    """No server yet (a host booting): the check passes; the coordinator's own start
    reports the connection failure as it always has."""
    port = free_port()
    url = f"postgresql://nobody@127.0.0.1:{port}/none"
    assert await check_connection_budget(url, workers=64, per_worker=1000) is None


def test_an_idle_connection_outlives_the_clients_keep_alive(pg_url: str, tmp_path: Path) -> None:
    """httpx drops an idle connection after 5 s; the coordinator keeps it longer, so the
    client always closes first (no request sent into a connection being closed)."""
    with coordinator_process(pg_url, log=tmp_path / "c.log") as proc:
        host, port = proc.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            for _ in range(2):  # the second on the same connection, after the pause
                conn.request("GET", "/health")
                response = conn.getresponse()
                assert (response.status, response.read()[:19]) == (200, b'{"status":"healthy"')
                time.sleep(6)  # past httpx's keep-alive expiry (and uvicorn's default)
        finally:
            conn.close()
