"""The job runner's side of the fencing check (SPEC §5 Fencing at delivery), on real git
repositories, the real test step and real HTTP: a refused confirmation (the real
coordinator does not know the run as this agent's active run) and no answer at all (nothing
listens) both end in a discarded result with a record and nothing pushed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from claude_cluster.agent.coordinator_client import CoordinatorClient
from claude_cluster.agent.job_runner import JobRunner
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.run_context import JobConfig
from claude_cluster.agent.workspace import WorkspaceManager
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import AgentRegistration, ExecuteTaskRequest
from tests.conftest import REGISTRATION_TOKEN, RunningCoordinator
from tests.support.agents import CALC_FIXED, ScriptedRunner, branches, make_origin, writes
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(60)


def request(origin: Path, **kw: Any) -> ExecuteTaskRequest:
    values: dict[str, Any] = {
        "run_id": 424242,
        "task_id": 7,
        "title": "add() subtracts",
        "description": "add(2, 3) returns -1",
        "github_repository": str(origin),
        "github_issue_number": 3,
        "repository_url": str(origin),
        "timeout_seconds": 60,
    }
    values.update(kw)
    return ExecuteTaskRequest(**values)


def job_runner(tmp_path: Path, client: CoordinatorClient) -> JobRunner:
    config = JobConfig(
        agent_id="agent-t",
        homes_dir=tmp_path / "ws" / "homes",
        test_timeout=30,
        git_user_name="Agent",
        git_user_email="agent@example.invalid",
    )
    return JobRunner(
        config,
        workspaces=WorkspaceManager(tmp_path / "ws", git_timeout=30),
        runner=ScriptedRunner([writes(CALC_FIXED)]),
        git_tokens=client.git_token,
        confirm_delivery=client.confirm_delivery,
    )


async def test_a_refused_confirmation_discards_the_result(
    start_coordinator: Callable[..., RunningCoordinator], tmp_path: Path
) -> None:
    coordinator = start_coordinator()
    origin = make_origin(tmp_path / "remote")
    client = CoordinatorClient(coordinator.url, registration_token=REGISTRATION_TOKEN)
    try:
        await client.register(
            AgentRegistration(id="agent-t", name="agent-t", url=f"http://127.0.0.1:{free_port()}")
        )
        rep = RunReporter(client, 424242)
        result = await job_runner(tmp_path, client).run(request(origin), rep)
    finally:
        await client.aclose()
    assert not result.succeeded and result.error_category == ErrorCategory.LOST
    assert "nothing was delivered" in result.message and "409" in result.message
    assert result.tests_ok is True  # the work was done, and kept out of the repository
    assert branches(origin) == ["main"]


async def test_no_answer_until_the_wall_time_discards_the_result(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "remote")
    nobody = CoordinatorClient(f"http://127.0.0.1:{free_port()}", registration_token="x", timeout=1)
    nobody.token = "an-agent-token"
    rep = RunReporter(nobody, 424242)
    started = time.monotonic()
    try:
        result = await job_runner(tmp_path, nobody).run(request(origin, timeout_seconds=12), rep)
    finally:
        await nobody.aclose()
    assert not result.succeeded and result.error_category == ErrorCategory.LOST, result.message
    assert time.monotonic() - started >= 11.5  # it kept asking until the wall time ran out
    assert "nothing was delivered" in result.message and "wall time" in result.message
    assert branches(origin) == ["main"]
