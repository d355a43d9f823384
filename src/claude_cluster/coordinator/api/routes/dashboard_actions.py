"""The dashboard's buttons: cancel, retry now, requeue to another agent, drain and undrain.

Each is a form post that goes through the coordinator service (never the store), after
three checks: someone is signed in, :func:`~claude_cluster.coordinator.web.access.may_act`
says they may act, and the form's CSRF token belongs to their session. Destructive actions
(cancel, requeue, drain) also need the form's ``confirm`` box ticked. Success redirects
back to the page with a fixed message; a refusal renders the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from claude_cluster.coordinator.api.deps import CoordinatorDep
from claude_cluster.coordinator.api.routes.dashboard import User, login_page
from claude_cluster.coordinator.api.routes.dashboard_pages import page
from claude_cluster.coordinator.service import Coordinator
from claude_cluster.coordinator.web import csrf
from claude_cluster.coordinator.web.access import DashboardUser
from claude_cluster.errors import ClusterError, Conflict, NotFound

router = APIRouter(tags=["dashboard"], include_in_schema=False)

CsrfField = Annotated[str, Form(alias=csrf.FIELD)]
Confirm = Annotated[str, Form()]


async def _act(
    request: Request,
    coordinator: Coordinator,
    user: DashboardUser | None,
    given_csrf: str,
    back: str,
    done: str,
    action: Callable[[str], Awaitable[Any]],
    *,
    confirmed: bool = True,
) -> Response:
    if user is None:
        return login_page(request)

    def refuse(status_code: int, message: str) -> Response:
        return page(
            request,
            "error.html",
            user,
            coordinator,
            status_code=status_code,
            message=message,
            back=back,
        )

    if not user.may_act:
        return refuse(403, "You may look but not act: ask an admin.")
    if user.session and not csrf.is_valid(
        coordinator.settings.secret_key, user.session, given_csrf
    ):
        return refuse(
            403,
            "This form is out of date or came from another site: reload the page and try again.",
        )
    if not confirmed:
        return refuse(400, "Tick the confirmation box to do this.")
    try:
        await action(f"{user.name} (dashboard)")
    except NotFound as exc:
        return refuse(404, exc.message)
    except Conflict as exc:
        return refuse(409, exc.message)
    except ClusterError as exc:
        return refuse(400, exc.message)
    return RedirectResponse(f"{back}?done={done}", status_code=303)


@router.post("/tasks/{task_id}/cancel")
async def cancel(
    task_id: int,
    request: Request,
    coordinator: CoordinatorDep,
    user: User,
    token: CsrfField = "",
    confirm: Confirm = "",
) -> Response:
    return await _act(
        request,
        coordinator,
        user,
        token,
        f"/tasks/{task_id}",
        "cancelled",
        lambda who: coordinator.cancel_task(task_id, f"cancelled by {who}"),
        confirmed=confirm == "yes",
    )


@router.post("/tasks/{task_id}/retry")
async def retry_now(
    task_id: int, request: Request, coordinator: CoordinatorDep, user: User, token: CsrfField = ""
) -> Response:
    return await _act(
        request,
        coordinator,
        user,
        token,
        f"/tasks/{task_id}",
        "retry",
        lambda who: coordinator.retry_now(task_id, who),
    )


@router.post("/tasks/{task_id}/requeue")
async def requeue(
    task_id: int,
    request: Request,
    coordinator: CoordinatorDep,
    user: User,
    agent_id: Annotated[str, Form(max_length=128)] = "",
    token: CsrfField = "",
    confirm: Confirm = "",
) -> Response:
    return await _act(
        request,
        coordinator,
        user,
        token,
        f"/tasks/{task_id}",
        "requeued",
        lambda who: coordinator.requeue_task(task_id, agent_id, who),
        confirmed=confirm == "yes",
    )


@router.post("/agents/{agent_id}/drain")
async def drain(
    agent_id: str,
    request: Request,
    coordinator: CoordinatorDep,
    user: User,
    token: CsrfField = "",
    confirm: Confirm = "",
) -> Response:
    return await _act(
        request,
        coordinator,
        user,
        token,
        f"/agents/{quote(agent_id, safe='')}",
        "drained",
        lambda _who: coordinator.drain_agent(agent_id, True),
        confirmed=confirm == "yes",
    )


@router.post("/agents/{agent_id}/undrain")
async def undrain(
    agent_id: str, request: Request, coordinator: CoordinatorDep, user: User, token: CsrfField = ""
) -> Response:
    return await _act(
        request,
        coordinator,
        user,
        token,
        f"/agents/{quote(agent_id, safe='')}",
        "undrained",
        lambda _who: coordinator.drain_agent(agent_id, False),
    )
