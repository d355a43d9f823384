"""The dashboard's buttons: cancel, retry now, requeue to another agent, drain and undrain.

Each is a form post that goes through the coordinator service (never the store), after
three checks: someone is signed in, :func:`~claude_cluster.coordinator.web.access.may_act`
says they may act, and the form's CSRF token belongs to their session. Destructive actions
(cancel, requeue, drain) also need the form's ``confirm`` box ticked. Success redirects
back to the page with a fixed message; a refusal renders the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from claude_cluster.coordinator.api.deps import AgentIdPath, CoordinatorDep, IdPath
from claude_cluster.coordinator.api.routes.dashboard import User, login_page
from claude_cluster.coordinator.api.routes.dashboard_pages import render
from claude_cluster.coordinator.service import Coordinator
from claude_cluster.coordinator.web import csrf
from claude_cluster.coordinator.web.access import DashboardUser
from claude_cluster.errors import ClusterError, Conflict, NotFound

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@dataclass
class Action:
    """One button press: who pressed it, with which form fields."""

    request: Request
    coordinator: Coordinator
    user: DashboardUser | None
    csrf_token: str
    confirmed: bool

    async def run(
        self,
        back: str,
        done: str,
        action: Callable[[str], Awaitable[Any]],
        *,
        destructive: bool = False,
    ) -> Response:
        """Check, then do ``action(who)``; redirect to ``back`` with ``done`` or refuse."""
        request, coordinator, user = self.request, self.coordinator, self.user
        if user is None:
            return login_page(request)

        def refuse(status_code: int, message: str) -> Response:
            return render(
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
            coordinator.settings.secret_key, user.session, self.csrf_token
        ):
            return refuse(
                403,
                "This form is out of date or came from another site: reload the page and try "
                "again.",
            )
        if destructive and not self.confirmed:
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


async def _action(
    request: Request,
    coordinator: CoordinatorDep,
    user: User,
    csrf_token: Annotated[str, Form(alias=csrf.FIELD)] = "",
    confirm: Annotated[str, Form()] = "",
) -> Action:
    return Action(request, coordinator, user, csrf_token, confirm == "yes")


Pressed = Annotated[Action, Depends(_action)]


def _agent_page(agent_id: str) -> str:
    return f"/agents/{quote(agent_id, safe='')}"


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: IdPath, act: Pressed) -> Response:
    coordinator = act.coordinator
    return await act.run(
        f"/tasks/{task_id}",
        "cancelled",
        lambda who: coordinator.cancel_task(task_id, f"cancelled by {who}"),
        destructive=True,
    )


@router.post("/tasks/{task_id}/retry")
async def retry_now(task_id: IdPath, act: Pressed) -> Response:
    coordinator = act.coordinator
    return await act.run(
        f"/tasks/{task_id}", "retry", lambda who: coordinator.retry_now(task_id, who)
    )


@router.post("/tasks/{task_id}/requeue")
async def requeue(
    task_id: IdPath,
    act: Pressed,
    agent_id: Annotated[str, Form(max_length=128, pattern=r"^[A-Za-z0-9._-]*$")] = "",
) -> Response:
    coordinator = act.coordinator
    return await act.run(
        f"/tasks/{task_id}",
        "requeued",
        lambda who: coordinator.requeue_task(task_id, agent_id, who),
        destructive=True,
    )


@router.post("/agents/{agent_id}/drain")
async def drain(agent_id: AgentIdPath, act: Pressed) -> Response:
    coordinator = act.coordinator
    return await act.run(
        _agent_page(agent_id),
        "drained",
        lambda _who: coordinator.drain_agent(agent_id, True),
        destructive=True,
    )


@router.post("/agents/{agent_id}/undrain")
async def undrain(agent_id: AgentIdPath, act: Pressed) -> Response:
    coordinator = act.coordinator
    return await act.run(
        _agent_page(agent_id), "undrained", lambda _who: coordinator.drain_agent(agent_id, False)
    )
