"""``/api/v1/tasks``: submit, list, show, change, cancel; runs and events of a task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi import status as http

from claude_cluster.coordinator.api.deps import Admin, CoordinatorDep, IdPath, Reader
from claude_cluster.coordinator.api.schemas import EventOut, RunOut, TaskCreate, TaskOut, TaskUpdate
from claude_cluster.coordinator.service import TaskRequest
from claude_cluster.domain.states import TaskStatus
from claude_cluster.errors import Conflict

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


@router.post("", status_code=http.HTTP_201_CREATED, responses={200: {"model": TaskOut}})
async def create_task(
    body: TaskCreate, coordinator: CoordinatorDep, _: Admin, response: Response
) -> TaskOut:
    """Queue a task for an issue. The open task of the same issue is returned with 200."""
    task, created = await coordinator.submit_task(
        TaskRequest(
            title=body.title,
            description=body.description,
            github_repository=body.github_repository,
            github_issue_number=body.github_issue_number,
            priority=body.priority,
            requirements=body.requirements,
            labels=body.labels,
            budget_usd=body.budget_usd,
            test_command=body.test_command,
            created_by="api",
        )
    )
    if not created:
        response.status_code = http.HTTP_200_OK
    return TaskOut.model_validate(task)


@router.get("")
async def list_tasks(
    coordinator: CoordinatorDep,
    _: Reader,
    status: TaskStatus | None = None,
    repository: Annotated[str | None, Query(max_length=500, pattern=r"^[^\x00]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> list[TaskOut]:
    tasks = await coordinator.repo.list_tasks(
        status=status.value if status else None, repository=repository, limit=limit, offset=offset
    )
    waiting = await coordinator.repo.waiting_reasons(tasks)
    return [
        TaskOut.model_validate(t).model_copy(update={"waiting_for": waiting.get(t.id)})
        for t in tasks
    ]


@router.get("/{task_id}")
async def get_task(task_id: IdPath, coordinator: CoordinatorDep, _: Reader) -> TaskOut:
    task = await coordinator.repo.get_task(task_id)
    waiting = await coordinator.repo.waiting_reasons([task])
    return TaskOut.model_validate(task).model_copy(update={"waiting_for": waiting.get(task.id)})


@router.put("/{task_id}")
async def update_task(
    task_id: IdPath, body: TaskUpdate, coordinator: CoordinatorDep, _: Admin
) -> TaskOut:
    changes = body.model_dump(exclude_unset=True, exclude={"status"})
    if body.status is not None:
        if body.status != TaskStatus.CANCELLED:
            raise Conflict("status can only be set to 'cancelled' (the dispatcher moves the rest)")
        task = await coordinator.cancel_task(task_id)
        if not changes:
            return TaskOut.model_validate(task)
    if changes and "priority" in changes and changes["priority"] is None:
        del changes["priority"]
    task = await coordinator.update_task(task_id, changes)
    return TaskOut.model_validate(task)


@router.delete("/{task_id}")
async def cancel_task(task_id: IdPath, coordinator: CoordinatorDep, _: Admin) -> TaskOut:
    """Cancel the task, stopping its run on the agent. 409 when it has already ended."""
    return TaskOut.model_validate(await coordinator.cancel_task(task_id))


@router.get("/{task_id}/runs")
async def task_runs(task_id: IdPath, coordinator: CoordinatorDep, _: Reader) -> list[RunOut]:
    return [RunOut.model_validate(r) for r in await coordinator.repo.list_runs(task_id)]


@router.get("/{task_id}/events")
async def task_events(
    task_id: IdPath,
    coordinator: CoordinatorDep,
    _: Reader,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> list[EventOut]:
    return [EventOut.model_validate(e) for e in await coordinator.events(task_id, after)]
