"""The dashboard's pages: the overview (and its live part), the task list, a task, an agent.

Server-rendered; the overview refreshes its live part by polling ``/overview/live`` and a
task page follows its log over Server-Sent Events (``dashboard_live``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from claude_cluster.coordinator.api.deps import AgentIdPath, CoordinatorDep, IdPath
from claude_cluster.coordinator.api.routes.dashboard import User, login_page
from claude_cluster.coordinator.service import Coordinator
from claude_cluster.coordinator.store.overview import TASK_SORTS, TaskFilter
from claude_cluster.coordinator.web import csrf, views
from claude_cluster.coordinator.web.access import DashboardUser
from claude_cluster.coordinator.web.templating import templates
from claude_cluster.domain.states import TaskStatus
from claude_cluster.errors import NotFound
from claude_cluster.run_log import tally

router = APIRouter(tags=["dashboard"], include_in_schema=False)

PAGE_SIZE = 25
#: what an action's redirect may say (``?done=``): fixed texts, never text from the URL
DONE = {
    "cancelled": "The task was cancelled and its run stopped.",
    "retry": "The task will be dispatched at the next free slot.",
    "requeued": "The task was moved.",
    "drained": "The agent is draining: it finishes its runs and takes no new ones.",
    "undrained": "The agent takes work again.",
}


def render(
    request: Request,
    name: str,
    user: DashboardUser,
    coordinator: Coordinator,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """Render a dashboard template with what every page needs."""
    settings = coordinator.settings
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "csrf_field": csrf.FIELD,
            "csrf_token": csrf.token_for(settings.secret_key, user.session),
            "done": DONE.get(request.query_params.get("done", "")),
            "web_url": settings.github_web_url,
            "now": datetime.now(UTC),
            **context,
        },
        status_code=status_code,
    )


async def _overview_context(coordinator: Coordinator) -> dict[str, Any]:
    repo = coordinator.repo
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    costs = await repo.cost_by_repository(today, today - timedelta(days=today.weekday()))
    agents = await repo.list_agents()
    return {
        "queue": await repo.queue_status(),
        "buckets": await repo.queue_by_priority(),
        "active": await repo.active_runs(),
        "agents": agents,
        "costs": costs,
        "chart": views.cost_chart(costs),
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, coordinator: CoordinatorDep, user: User) -> Response:
    if user is None:
        return login_page(request, status_code=200)
    return render(
        request, "overview.html", user, coordinator, **await _overview_context(coordinator)
    )


@router.get("/overview/live", response_class=HTMLResponse)
async def overview_live(request: Request, coordinator: CoordinatorDep, user: User) -> Response:
    """The overview's live part alone, for the page's polling."""
    if user is None:
        return Response("sign in first", status_code=401)
    return render(
        request, "_overview_live.html", user, coordinator, **await _overview_context(coordinator)
    )


def _filter_error(
    request: Request, user: DashboardUser, coordinator: Coordinator, message: str
) -> Response:
    return render(request, "error.html", user, coordinator, status_code=422, message=message)


@router.get("/tasks", response_class=HTMLResponse)
async def task_list(
    request: Request,
    coordinator: CoordinatorDep,
    user: User,
    status: Annotated[str, Query()] = "",
    repository: Annotated[str, Query(max_length=500)] = "",
    agent: Annotated[str, Query(max_length=128)] = "",
    label: Annotated[str, Query(max_length=100)] = "",
    q: Annotated[str, Query(max_length=200)] = "",
    sort: Annotated[str, Query()] = "id",
    order: Annotated[str, Query()] = "desc",
    page: int = 1,
) -> Response:
    if user is None:
        return login_page(request)
    statuses = [s.value for s in TaskStatus]
    if status and status not in statuses:
        return _filter_error(
            request, user, coordinator, f"status {status!r} is not one of {', '.join(statuses)}"
        )
    if sort not in TASK_SORTS:
        return _filter_error(
            request, user, coordinator, f"sort {sort!r} is not one of {', '.join(TASK_SORTS)}"
        )
    if order not in ("asc", "desc"):
        return _filter_error(request, user, coordinator, "order must be asc or desc")
    if page < 1:
        return _filter_error(request, user, coordinator, "page must be 1 or more")
    found = TaskFilter(
        status=status or None,
        repository=repository or None,
        agent_id=agent or None,
        label=label or None,
        text=q or None,
        sort=sort,
        descending=order == "desc",
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    tasks, total = await coordinator.repo.search_tasks(found)
    repositories, agents = await coordinator.repo.task_filter_choices()
    params = {
        k: v
        for k, v in {
            "status": status,
            "repository": repository,
            "agent": agent,
            "label": label,
            "q": q,
            "sort": sort,
            "order": order,
        }.items()
        if v
    }
    pages = max(1, -(-total // PAGE_SIZE))

    def page_url(number: int) -> str:
        return "/tasks?" + urlencode({**params, "page": number})

    return render(
        request,
        "tasks.html",
        user,
        coordinator,
        tasks=tasks,
        total=total,
        page_number=page,
        pages=pages,
        prev_url=page_url(page - 1),
        next_url=page_url(page + 1),
        params=params,
        statuses=statuses,
        repositories=repositories,
        agents=agents,
        sorts=list(TASK_SORTS),
        issue_href=views.issue_href,
        safe_href=views.safe_href,
    )


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(
    task_id: IdPath, request: Request, coordinator: CoordinatorDep, user: User
) -> Response:
    if user is None:
        return login_page(request)
    web_url = coordinator.settings.github_web_url
    try:
        task = await coordinator.repo.get_task(task_id)
    except NotFound as exc:
        return render(
            request, "error.html", user, coordinator, status_code=404, message=exc.message
        )
    runs = await coordinator.repo.list_runs(task_id)
    events = await coordinator.events(task_id)
    items = [views.item_of(e) for e in events]
    name = "_timeline.html" if request.query_params.get("part") == "timeline" else "task.html"
    return render(
        request,
        name,
        user,
        coordinator,
        task=task,
        runs=runs,
        items=items,
        tallies=tally(items),
        last_event_id=events[-1].id if events else 0,
        agents=await coordinator.repo.list_agents(),
        waiting_for=(await coordinator.repo.waiting_reasons([task])).get(task.id),
        issue_link=views.issue_href(task.github_repository, task.github_issue_number, web_url),
        pr_link=views.safe_href(task.github_pr_url, web_url),
        safe_href=views.safe_href,
    )


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent_page(
    agent_id: AgentIdPath, request: Request, coordinator: CoordinatorDep, user: User
) -> Response:
    if user is None:
        return login_page(request)
    try:
        agent = await coordinator.repo.get_agent(agent_id)
    except NotFound as exc:
        return render(
            request, "error.html", user, coordinator, status_code=404, message=exc.message
        )
    return render(
        request,
        "agent.html",
        user,
        coordinator,
        agent=agent,
        runs=await coordinator.repo.agent_runs(agent_id),
        repositories=await coordinator.repo.recent_repositories(agent_id),
    )
