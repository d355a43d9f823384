"""The dashboard's sign-in: people sign in with the admin token once; the browser then
holds a session cookie that is an HMAC of ``SECRET_KEY`` (the token itself is never stored
in the browser). Bearer tokens work as everywhere else, so scripts can read the pages too.

:func:`dashboard_user` is the dependency of every page, stream and action
(``dashboard_pages``, ``dashboard_live``, ``dashboard_actions``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from claude_cluster.coordinator.api.deps import (
    CoordinatorDep,
    Credentials,
    Principal,
    principal,
)
from claude_cluster.coordinator.service import Coordinator, tokens_equal
from claude_cluster.coordinator.web.access import DashboardUser
from claude_cluster.coordinator.web.templating import templates
from claude_cluster.errors import ClusterError

router = APIRouter(tags=["dashboard"], include_in_schema=False)
COOKIE = "claude_cluster_session"


def _session_value(coordinator: Coordinator) -> str:
    key = coordinator.settings.secret_key.encode()
    return hmac.new(key, b"dashboard-admin", hashlib.sha256).hexdigest()


async def dashboard_user(
    request: Request, coordinator: CoordinatorDep, credentials: Credentials
) -> DashboardUser | None:
    """The signed-in person (session cookie) or script (bearer token), or ``None``."""
    cookie = request.cookies.get(COOKIE, "")
    if cookie and hmac.compare_digest(cookie, _session_value(coordinator)):
        return DashboardUser(Principal("admin"), session=cookie)
    try:
        caller = await principal(coordinator, credentials)
    except ClusterError:
        return None
    return DashboardUser(caller) if caller.kind == "admin" else None


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
    if not tokens_equal(token, coordinator.settings.admin_token):
        return login_page(request, "That is not the admin token.")
    response = RedirectResponse(_local_path(next), status_code=303)
    response.set_cookie(
        COOKIE, _session_value(coordinator), httponly=True, samesite="strict", max_age=7 * 86400
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response
