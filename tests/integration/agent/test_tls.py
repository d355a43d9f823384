"""TLS on every hop, over real sockets: the coordinator and an agent each serve HTTPS with a
certificate from a CA made in the test, and each verifies the other against that CA. A
peer whose certificate comes from another CA (a man in the middle) gets nothing: no
dispatch (which carries the run's git token), no registration token."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from claude_cluster.agent.coordinator_client import CoordinatorClient, CoordinatorUnavailable
from claude_cluster.coordinator.agent_client import AgentClient
from claude_cluster.coordinator.app import create_app
from claude_cluster.coordinator.store.tables import Agent
from claude_cluster.domain.wire import AgentRegistration, ExecuteTaskRequest
from claude_cluster.errors import AgentCallError
from claude_cluster.tls import client_verify
from tests.conftest import ADMIN_TOKEN, REGISTRATION_TOKEN, coordinator_settings
from tests.support.agents import CALC_FIXED, branch_file, fixer_script, make_origin, start_daemon
from tests.support.agents import agent_settings as make_agent_settings
from tests.support.databases import new_sqlite_database
from tests.support.processes import coordinator_process
from tests.support.servers import ServerThread
from tests.support.tls import TestCA
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


def test_the_coordinator_process_serves_https_and_nothing_else(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue("coordinator")
    db = new_sqlite_database(tmp_path)
    with coordinator_process(
        db,
        log=tmp_path / "coordinator.log",
        TLS_CERT_FILE=str(leaf.cert),
        TLS_KEY_FILE=str(leaf.key),
        TLS_CA_FILE=str(ca.cert),
    ) as proc:
        assert proc.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(ca.cert))
        health = httpx.get(f"{proc.url}/health", verify=trusted, timeout=5)
        assert health.status_code == 200
        # The system trust store does not know the cluster CA...
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{proc.url}/health", timeout=5)
        # ...and clear text gets no answer (the admin token would travel in the clear).
        plain = proc.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


async def test_agent_and_coordinator_verify_each_other_and_a_task_completes(
    db_url: str, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "pki")
    server_leaf, agent_leaf = ca.issue("coordinator"), ca.issue("agent-1")
    settings = coordinator_settings(db_url, heartbeat_interval=0.5, tls_ca_file=ca.cert)
    coordinator = ServerThread(create_app(settings), tls=server_leaf).start()
    try:
        origin = make_origin(tmp_path / "remote")
        agent = await start_daemon(
            make_agent_settings(
                coordinator.url,
                tmp_path / "ws",
                agent_command=f"{sys.executable} {fixer_script(tmp_path / 'bin')}",
                specialties=["general", "backend"],
                tls_cert_file=agent_leaf.cert,
                tls_key_file=agent_leaf.key,
                tls_ca_file=ca.cert,
            )
        )
        try:
            async with httpx.AsyncClient(
                base_url=coordinator.url,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                verify=client_verify(ca.cert),
                timeout=10,
            ) as api:

                async def registered() -> list[dict[str, object]]:
                    return list((await api.get("/api/v1/agents")).json())

                [listed] = await eventually(registered, timeout=20)
                assert listed["url"] == f"https://127.0.0.1:{agent.daemon.settings.port}"
                task = (
                    await api.post(
                        "/api/v1/tasks",
                        json={
                            "title": "add() subtracts",
                            "description": "add(2, 3) returns -1",
                            "github_repository": str(origin),
                            "github_issue_number": 3,
                        },
                    )
                ).json()

                async def done() -> str | None:
                    status = (await api.get(f"/api/v1/tasks/{task['id']}")).json()["status"]
                    return status if status in ("completed", "failed") else None

                assert await eventually(done, timeout=40, interval=0.2) == "completed"
                [run] = (await api.get(f"/api/v1/tasks/{task['id']}/runs")).json()
                assert branch_file(origin, run["branch"], "calc.py") == CALC_FIXED
        finally:
            await agent.stop()
    finally:
        coordinator.stop()


def _echo_app() -> FastAPI:
    app = FastAPI()
    app.state.calls = []

    @app.post("/execute_task")
    async def execute() -> dict[str, str]:
        app.state.calls.append("execute")
        return {"status": "accepted"}

    @app.post("/api/v1/agents")
    async def register() -> dict[str, str]:
        app.state.calls.append("register")
        return {"status": "ok"}

    return app


async def test_a_peer_with_a_certificate_from_another_ca_gets_nothing(tmp_path: Path) -> None:
    cluster_ca = TestCA(tmp_path / "cluster", "cluster CA")
    rogue_ca = TestCA(tmp_path / "rogue", "rogue CA")
    app = _echo_app()
    impostor = ServerThread(app, tls=rogue_ca.issue("impostor")).start()
    try:
        client = AgentClient(timeout=5, verify=client_verify(cluster_ca.cert))
        agent = Agent(id="agent-1", url=impostor.url, call_secret="s" * 32)
        request = ExecuteTaskRequest.model_validate(
            {
                "run_id": 1,
                "task_id": 1,
                "attempt": 1,
                "title": "t",
                "github_repository": "o/r",
                "github_issue_number": 1,
                "repository_url": "https://github.com/o/r.git",
                "git_token": "ghs_secret-token",
            }
        )
        try:
            with pytest.raises(AgentCallError, match="ConnectError"):
                await client.execute(agent, request)
        finally:
            await client.close()
        coordinator_client = CoordinatorClient(
            impostor.url,
            registration_token=REGISTRATION_TOKEN,
            verify=client_verify(cluster_ca.cert),
        )
        registration = AgentRegistration(id="agent-1", name="agent-1", secret="s" * 32)
        try:
            with pytest.raises(CoordinatorUnavailable):
                await coordinator_client.register(registration)
        finally:
            await coordinator_client.aclose()
        assert app.state.calls == []  # neither call reached the impostor's handlers
    finally:
        impostor.stop()
