"""Dependencies of the routes: the service object and who is calling.

Three kinds of bearer token: the admin token (``ADMIN_TOKEN``) or an API token for people
and the CLI; the registration token, good only for ``POST /api/v1/agents`` of a new agent
id; and the per-agent token that registration returns, good only for that agent's own
resources (including registering that agent again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from claude_cluster.coordinator.service import Coordinator, hash_token, tokens_equal
from claude_cluster.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="admin, API or agent token")


async def get_coordinator(request: Request) -> Coordinator:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a
    # thread hop on every request for an attribute read
    coordinator: Coordinator = request.app.state.coordinator
    return coordinator


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


#: roles of people's tokens: admins may do everything, viewers only read
ROLES = ("admin", "viewer")


@dataclass(frozen=True)
class Principal:
    kind: str  # "admin", "viewer" or "agent"
    agent_id: str | None = None

    def require_agent(self, agent_id: str, *, read: bool = False) -> None:
        """Admins may act for any agent, viewers may read any agent's data; an agent only
        for itself."""
        if self.kind == "agent" and self.agent_id != agent_id:
            raise Forbidden(f"this token belongs to agent {self.agent_id}, not {agent_id}")
        if self.kind == "viewer" and not read:
            raise Forbidden("a viewer token is read-only")


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return credentials.credentials


async def principal(coordinator: CoordinatorDep, credentials: Credentials) -> Principal:
    token = _token(credentials)
    if tokens_equal(token, coordinator.settings.admin_token):
        return Principal("admin")
    holder = await coordinator.token_holders.holder(hash_token(token))
    if holder is None:
        raise Unauthorized("invalid bearer token")
    kind, agent_id = holder
    if kind == "agent":
        return Principal("agent", agent_id)
    return Principal(kind if kind in ROLES else "viewer")


async def admin(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    if caller.kind == "viewer":
        raise Forbidden("a viewer token is read-only: this endpoint needs an admin token")
    if caller.kind != "admin":
        raise Forbidden("this endpoint needs an admin or API token")
    return caller


async def reader(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    if caller.kind not in ROLES:
        raise Forbidden("this endpoint needs an admin, viewer or API token")
    return caller


@dataclass(frozen=True)
class Enroller:
    """Who asks to register an agent: the registration token (new agent ids only), an
    agent with its own token (itself only), or an admin (anything)."""

    kind: str  # "registration", "agent" or "admin"
    token: str
    agent_id: str | None = None


async def enroller(coordinator: CoordinatorDep, credentials: Credentials) -> Enroller:
    token = _token(credentials)
    if tokens_equal(token, coordinator.settings.agent_registration_token):
        return Enroller("registration", token)
    try:
        caller = await principal(coordinator, credentials)
    except Unauthorized:
        raise Unauthorized("invalid registration, agent or admin token") from None
    if caller.kind not in ("admin", "agent"):
        raise Forbidden("a viewer token is read-only: registering needs the registration token")
    return Enroller(caller.kind, token, caller.agent_id)


#: a row id in a path: positive and within BIGINT, else 422 (never a database error)
MAX_ID = 2**63 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
#: an agent id in a path (the column holds 128 characters)
AgentIdPath = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]

AnyCaller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
Reader = Annotated[Principal, Depends(reader)]
Enrolling = Annotated[Enroller, Depends(enroller)]
