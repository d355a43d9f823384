"""Dashboard sessions: a random id in the cookie, its SHA-256 and role in the database.

Signing in with the admin token, or an API token, starts a session of that role (admin or
viewer) that lasts ``DASHBOARD_SESSION_HOURS``; signing out deletes it, so a copied cookie
stops working too. Cookies are HttpOnly, SameSite=Strict, and Secure when the request came
over https (or ``FORCE_SECURE_COOKIES=true``).

Failed sign-ins are throttled per client address: after :data:`MAX_FAILURES` within
:data:`WINDOW_SECONDS` the client must wait until the oldest of them leaves the window.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import timedelta

from fastapi import Request
from fastapi.responses import Response

from claude_cluster.coordinator.api.deps import ROLES, Principal
from claude_cluster.coordinator.service import Coordinator, hash_token, tokens_equal
from claude_cluster.coordinator.store.common import utcnow

COOKIE = "claude_cluster_session"
MAX_FAILURES = 5
WINDOW_SECONDS = 300.0
#: clients remembered by the throttle at most (the oldest are forgotten)
MAX_CLIENTS = 10_000


async def role_of_token(coordinator: Coordinator, token: str) -> str | None:
    """The role a sign-in token grants: admin for ``ADMIN_TOKEN``, the API token's role."""
    if tokens_equal(token, coordinator.settings.admin_token):
        return "admin"
    row = await coordinator.repo.api_token_by_hash(hash_token(token))
    return row.role if row is not None and row.role in ROLES else None


async def start(coordinator: Coordinator, role: str) -> str:
    """A new session of ``role``; returns the cookie value (never stored as is)."""
    session = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(hours=coordinator.settings.dashboard_session_hours)
    await coordinator.repo.add_session(hash_token(session), role, expires)
    return session


async def principal_of(coordinator: Coordinator, session: str) -> Principal | None:
    """Who a session cookie signs in, or None (unknown, signed out, expired)."""
    if not session:
        return None
    role = await coordinator.repo.session_role(hash_token(session))
    return Principal(role) if role in ROLES else None


async def end(coordinator: Coordinator, session: str) -> None:
    if session:
        await coordinator.repo.delete_session(hash_token(session))


def set_cookie(request: Request, response: Response, coordinator: Coordinator, value: str) -> None:
    settings = coordinator.settings
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(settings.dashboard_session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or settings.force_secure_cookies,
    )


class SignInThrottle:
    """Failed sign-ins per client, in a sliding window (in memory, per process)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_seconds(self, client: str) -> float:
        """0 when the client may try; otherwise how long until it may."""
        failures = self._recent(client)
        if len(failures) < MAX_FAILURES:
            return 0.0
        return max(0.0, failures[0] + WINDOW_SECONDS - self._clock())

    def failed(self, client: str) -> None:
        self._recent(client).append(self._clock())
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        cutoff = self._clock() - WINDOW_SECONDS
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures
