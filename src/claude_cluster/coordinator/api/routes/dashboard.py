"""The dashboard's sign-in: people sign in once with the admin token or an API token; the
browser then holds a random session cookie whose role (admin or viewer) the database keeps
(:mod:`~claude_cluster.coordinator.web.sessions`; the token itself never reaches the
browser). Bearer tokens work as everywhere else, so scripts can read the pages too.

:func:`dashboard_user` is the dependency of every page, stream and action
(``dashboard_pages``, ``dashboard_live``, ``dashboard_actions``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from claude_cluster.coordinator.api.deps import (
    ROLES,
    CoordinatorDep,
    Credentials,
    principal,
)
from claude_cluster.coordinator.web import sessions
from claude_cluster.coordinator.web.access import DashboardUser
from claude_cluster.coordinator.web.templating import templates
from claude_cluster.errors import ClusterError

router = APIRouter(tags=["dashboard"], include_in_schema=False)
COOKIE = sessions.COOKIE


async def dashboard_user(
    request: Request, coordinator: CoordinatorDep, credentials: Credentials
) -> DashboardUser | None:
    """The signed-in person (session cookie) or script (bearer token), or ``None``."""
    cookie = request.cookies.get(COOKIE, "")
    signed_in = await sessions.principal_of(coordinator, cookie)
    if signed_in is not None:
        return DashboardUser(signed_in, session=cookie)
    try:
        caller = await principal(coordinator, credentials)
    except ClusterError:
        return None
    return DashboardUser(caller) if caller.kind in ROLES else None


User = Annotated[DashboardUser | None, Depends(dashboard_user)]


def login_page(request: Request, error: str = "", status_code: int = 401) -> Response:
    next_path = request.url.path if request.method == "GET" else "/"
    return templates.TemplateResponse(
        request,
        "login.html",
        {"error": error, "next": next_path, "user": None},
        status_code=status_code,
    )


def _local_path(path: str) -> str:
    """Only a path on this site is a place to return to after signing in."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


@router.post("/login")
async def login(
    request: Request,
    coordinator: CoordinatorDep,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    throttle = _throttle(request)
    client = request.client.host if request.client else "?"
    wait = throttle.wait_seconds(client)
    if wait > 0:
        refused = login_page(
            request, f"Too many failed sign-ins: try again in {int(wait) + 1} s.", 429
        )
        refused.headers["Retry-After"] = str(int(wait) + 1)
        return refused
    role = await sessions.role_of_token(coordinator, token)
    if role is None:
        throttle.failed(client)
        return login_page(request, "That is not the admin token or an API token.")
    throttle.succeeded(client)
    response = RedirectResponse(_local_path(next), status_code=303)
    sessions.set_cookie(request, response, coordinator, await sessions.start(coordinator, role))
    return response


@router.post("/logout")
async def logout(request: Request, coordinator: CoordinatorDep) -> Response:
    await sessions.end(coordinator, request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def _throttle(request: Request) -> sessions.SignInThrottle:
    throttle: sessions.SignInThrottle | None = getattr(request.app.state, "sign_ins", None)
    if throttle is None:
        throttle = request.app.state.sign_ins = sessions.SignInThrottle()
    return throttle
