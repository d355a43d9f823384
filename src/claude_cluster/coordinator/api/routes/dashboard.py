"""The dashboard: a server-rendered, read-only view of the queue, the agents, the tasks and
their runs, with a task's log live over Server-Sent Events.

People sign in with the admin token once; the browser then holds a session cookie that is
an HMAC of ``SECRET_KEY`` (the token itself is never stored in the browser). Bearer tokens
work as everywhere else, so scripts can read the pages and the stream too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sse_starlette.sse import EventSourceResponse

from claude_cluster.coordinator.api.deps import CoordinatorDep, Credentials, principal
from claude_cluster.coordinator.service import Coordinator, tokens_equal
from claude_cluster.errors import ClusterError

router = APIRouter(tags=["dashboard"], include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[2] / "templates")
COOKIE = "claude_cluster_session"


def _session_value(coordinator: Coordinator) -> str:
    key = coordinator.settings.secret_key.encode()
    return hmac.new(key, b"dashboard-admin", hashlib.sha256).hexdigest()


async def _signed_in(request: Request, coordinator: Coordinator, credentials: Credentials) -> bool:
    cookie = request.cookies.get(COOKIE, "")
    if cookie and hmac.compare_digest(cookie, _session_value(coordinator)):
        return True
    try:
        return (await principal(coordinator, credentials)).kind == "admin"
    except ClusterError:
        return False


async def viewer(request: Request, coordinator: CoordinatorDep, credentials: Credentials) -> bool:
    return await _signed_in(request, coordinator, credentials)


Viewer = Annotated[bool, Depends(viewer)]


def _login(request: Request, error: str = "", status_code: int = 401) -> Response:
    return templates.TemplateResponse(
        request, "login.html", {"error": error}, status_code=status_code
    )


@router.post("/login")
async def login(
    request: Request, coordinator: CoordinatorDep, token: Annotated[str, Form()]
) -> Response:
    if not tokens_equal(token, coordinator.settings.admin_token):
        return _login(request, "That is not the admin token.")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE, _session_value(coordinator), httponly=True, samesite="strict", max_age=7 * 86400
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, coordinator: CoordinatorDep, signed_in: Viewer) -> Response:
    if not signed_in:
        return _login(request, status_code=200)
    return templates.TemplateResponse(
        request,
        "overview.html",
        {
            "queue": await coordinator.repo.queue_status(),
            "agents": await coordinator.repo.list_agents(),
            "tasks": await coordinator.repo.list_tasks(limit=50),
        },
    )


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(
    task_id: int, request: Request, coordinator: CoordinatorDep, signed_in: Viewer
) -> Response:
    if not signed_in:
        return _login(request)
    return templates.TemplateResponse(
        request,
        "task.html",
        {
            "task": await coordinator.repo.get_task(task_id),
            "runs": await coordinator.repo.list_runs(task_id),
            "events": await coordinator.events(task_id),
        },
    )


@router.get("/tasks/{task_id}/stream")
async def task_stream(
    task_id: int, request: Request, coordinator: CoordinatorDep, signed_in: Viewer
) -> Response:
    """The task's new events as they are stored (``event: task`` for status changes)."""
    if not signed_in:
        return Response("sign in first", status_code=401)
    await coordinator.repo.get_task(task_id)  # 404 for an unknown task

    async def events() -> AsyncIterator[dict[str, str]]:
        async for message in coordinator.bus.subscribe(f"task:{task_id}"):
            kind = "log" if "seq" in message else "task"
            yield {"event": kind, "data": json.dumps(message, default=str)}

    return EventSourceResponse(events(), ping=15)
