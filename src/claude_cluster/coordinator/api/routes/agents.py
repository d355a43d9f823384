"""``/api/v1/agents``: registration, heartbeat, listing, manual assignment, drain."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from claude_cluster.coordinator.api.deps import (
    Admin,
    AgentIdPath,
    AnyCaller,
    CoordinatorDep,
    Enrolling,
    Reader,
)
from claude_cluster.coordinator.api.schemas import (
    AgentOut,
    AssignIn,
    DrainIn,
    RegistrationOut,
    RunOut,
    TaskOut,
)
from claude_cluster.domain.wire import AgentRegistration, Heartbeat, HeartbeatReply
from claude_cluster.errors import Conflict, Forbidden

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])


@router.post("", status_code=status.HTTP_201_CREATED, responses={200: {"model": RegistrationOut}})
async def register_agent(
    body: AgentRegistration, coordinator: CoordinatorDep, caller: Enrolling, response: Response
) -> RegistrationOut:
    """Register a new agent (registration token) or register an agent again (its own token,
    or an admin's). Returns the agent's own token; runs the coordinator still assigned to a
    re-registering agent are lost and requeued."""
    if caller.kind == "agent" and caller.agent_id != body.id:
        raise Forbidden(f"this token belongs to agent {caller.agent_id}, not {body.id}")
    keep = caller.token if caller.kind == "agent" else None
    agent, token, created = await coordinator.register_agent(
        body, replace=caller.kind != "registration", keep_token=keep
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return RegistrationOut(
        agent=AgentOut.model_validate(agent),
        token=token,
        created=created,
        heartbeat_interval=coordinator.settings.heartbeat_interval,
        lease_seconds=coordinator.settings.run_lease_seconds,
    )


@router.get("")
async def list_agents(coordinator: CoordinatorDep, _: Reader) -> list[AgentOut]:
    return [AgentOut.model_validate(a) for a in await coordinator.repo.list_agents()]


@router.get("/{agent_id}")
async def get_agent(
    agent_id: AgentIdPath, coordinator: CoordinatorDep, caller: AnyCaller
) -> AgentOut:
    caller.require_agent(agent_id, read=True)
    return AgentOut.model_validate(await coordinator.repo.get_agent(agent_id))


@router.put("/{agent_id}")
async def heartbeat(
    agent_id: AgentIdPath, body: Heartbeat, coordinator: CoordinatorDep, caller: AnyCaller
) -> HeartbeatReply:
    """The heartbeat: the agent's status, load and the runs it holds."""
    caller.require_agent(agent_id)
    return await coordinator.heartbeat(agent_id, body)


@router.get("/{agent_id}/tasks")
async def agent_tasks(
    agent_id: AgentIdPath, coordinator: CoordinatorDep, caller: AnyCaller
) -> list[RunOut]:
    """The agent's runs, newest first (each names its task)."""
    caller.require_agent(agent_id, read=True)
    return [RunOut.model_validate(r) for r in await coordinator.repo.agent_runs(agent_id)]


@router.post("/{agent_id}/tasks")
async def assign_task(
    agent_id: AgentIdPath, body: AssignIn, coordinator: CoordinatorDep, _: Admin
) -> TaskOut:
    """Dispatch a queued task to this agent now. 409 when the agent has no free slot."""
    if await coordinator.assign_task(agent_id, body.task_id) == 0:
        raise Conflict(
            f"agent {agent_id} cannot take task {body.task_id} now (offline, "
            "draining, full, or not matching its requirements)"
        )
    return TaskOut.model_validate(await coordinator.repo.get_task(body.task_id))


@router.post("/{agent_id}/reset")
async def reset_agent(agent_id: AgentIdPath, coordinator: CoordinatorDep, _: Admin) -> AgentOut:
    """Forget the agent's token: it stops working, and the agent may enrol again with the
    registration token (a rebuilt host that lost its state directory)."""
    return AgentOut.model_validate(await coordinator.reset_agent(agent_id))


@router.post("/{agent_id}/ready")
async def mark_agent_ready(
    agent_id: AgentIdPath, coordinator: CoordinatorDep, _: Admin
) -> AgentOut:
    """Clear the agent's not-ready reason and fault streak: it takes work again (its own
    start checks set a reason again at its next heartbeat if they still fail)."""
    return AgentOut.model_validate(await coordinator.mark_agent_ready(agent_id))


@router.post("/{agent_id}/drain")
async def drain_agent(
    agent_id: AgentIdPath, coordinator: CoordinatorDep, _: Admin, body: DrainIn | None = None
) -> AgentOut:
    """Stop giving the agent new runs (``{"drain": false}`` undoes it)."""
    agent = await coordinator.drain_agent(agent_id, body.drain if body else True)
    return AgentOut.model_validate(agent)
