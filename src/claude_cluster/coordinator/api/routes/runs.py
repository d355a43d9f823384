"""``/api/v1/runs``: what an agent reports about its runs (events, phase, result)."""

from __future__ import annotations

from fastapi import APIRouter

from claude_cluster.coordinator.api.deps import AnyCaller, CoordinatorDep, IdPath
from claude_cluster.coordinator.api.schemas import RunOut
from claude_cluster.domain.wire import (
    DeliveryConfirmation,
    GitTokenReply,
    GitTokenRequest,
    RunEventBatch,
    RunPhase,
    RunResult,
)
from claude_cluster.errors import Forbidden

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


def _agent_of(caller: AnyCaller) -> str:
    if caller.kind != "agent" or caller.agent_id is None:
        raise Forbidden("only the run's agent reports on a run")
    return caller.agent_id


@router.get("/{run_id}")
async def get_run(run_id: IdPath, coordinator: CoordinatorDep, caller: AnyCaller) -> RunOut:
    run = await coordinator.repo.get_run(run_id)
    caller.require_agent(run.agent_id, read=True)
    return RunOut.model_validate(run)


@router.post("/{run_id}/events")
async def report_events(
    run_id: IdPath, body: RunEventBatch, coordinator: CoordinatorDep, caller: AnyCaller
) -> dict[str, int]:
    """Store a batch of events; resending a batch stores nothing twice."""
    stored = await coordinator.record_events(run_id, _agent_of(caller), body.events)
    return {"stored": stored}


@router.post("/{run_id}/phase")
async def report_phase(
    run_id: IdPath, body: RunPhase, coordinator: CoordinatorDep, caller: AnyCaller
) -> dict[str, str]:
    task = await coordinator.set_phase(run_id, _agent_of(caller), body.phase)
    return {"task_status": task.status}


@router.post("/{run_id}/git-token")
async def git_token(
    run_id: int, body: GitTokenRequest, coordinator: CoordinatorDep, caller: AnyCaller
) -> GitTokenReply:
    """A fresh git token for the run's fetch or delivery; only for its agent, while active."""
    return await coordinator.git_token(run_id, _agent_of(caller), body.purpose)


@router.post("/{run_id}/confirm-delivery")
async def confirm_delivery(
    run_id: IdPath, coordinator: CoordinatorDep, caller: AnyCaller
) -> DeliveryConfirmation:
    """The fencing check before a push or pull request: 200 with the deliver token while
    the run holds its task; 409 (or 403 for another agent's run) when it must not deliver."""
    return await coordinator.confirm_delivery(run_id, _agent_of(caller))


@router.post("/{run_id}/result")
async def report_result(
    run_id: IdPath, body: RunResult, coordinator: CoordinatorDep, caller: AnyCaller
) -> dict[str, object]:
    """How the run ended. Reporting the same run twice changes nothing the second time."""
    end = await coordinator.finish_run(run_id, _agent_of(caller), body)
    return {
        "task_status": end.task.status,
        "run_status": end.run.status,
        "already_finished": end.already_finished,
        "retry_in_seconds": end.delay_seconds if end.retried else None,
    }
