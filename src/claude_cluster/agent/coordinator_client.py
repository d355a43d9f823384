"""How the agent calls the coordinator: registration, heartbeat and run reports.

Every failure is one of three kinds, and callers act on the kind, not on status codes:

    ClusterError
    └── CoordinatorError             a call to the coordinator failed
        ├── CoordinatorUnavailable   no answer, 5xx, 408 or 429: try again later
        ├── NotRegistered            401/404 for the agent: register again
        └── CoordinatorRejected      any other 4xx: resending the same thing will not help
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from claude_cluster.agent.identity import TokenFile
from claude_cluster.domain.wire import (
    AgentRegistration,
    DeliveryConfirmation,
    GitTokenReply,
    GitTokenRequest,
    Heartbeat,
    HeartbeatReply,
    RunEventBatch,
    RunPhase,
    RunResult,
)
from claude_cluster.errors import ClusterError

__all__ = [
    "CoordinatorClient",
    "CoordinatorError",
    "CoordinatorRejected",
    "CoordinatorUnavailable",
    "NotRegistered",
    "Registered",
]

_RETRYABLE_STATUS = frozenset({408, 425, 429})


class CoordinatorError(ClusterError):
    """Coordinator call {call} failed: {detail}"""

    retryable = True

    def __init__(self, message: str | None = None, **context: Any) -> None:
        context.setdefault("call", "")
        context.setdefault("detail", "")
        context.setdefault("status", None)
        super().__init__(message, **context)

    @property
    def status(self) -> int | None:
        status: int | None = self.context["status"]
        return status


class CoordinatorUnavailable(CoordinatorError):
    """The coordinator did not answer {call}: {detail}"""


class NotRegistered(CoordinatorError):
    """The coordinator does not know this agent or its token ({call}: {detail})"""


class CoordinatorRejected(CoordinatorError):
    """The coordinator refused {call}: {detail}"""

    retryable = False


@dataclass(frozen=True)
class Registered:
    """The coordinator's answer to a registration."""

    agent_id: str
    token: str
    created: bool
    heartbeat_interval: float
    lease_seconds: float


class CoordinatorClient:
    """The agent's HTTP client for the coordinator's ``/api/v1`` endpoints.

    Args:
        base_url: ``COORDINATOR_URL``.
        registration_token: presented to ``POST /api/v1/agents`` when the agent has no
            token of its own yet (or the coordinator no longer knows it).
        token_file: where the agent's own token is kept across restarts (None: memory).
        timeout: seconds per request.
        transport: an httpx transport (tests).
        verify: what the coordinator's certificate is verified with (the cluster CA).
    """

    def __init__(
        self,
        base_url: str,
        *,
        registration_token: str,
        token_file: TokenFile | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._registration_token = registration_token
        self._token_file = token_file
        #: the agent's own token (saved, or from the last registration); every call but a
        #: first enrolment presents it
        self.token: str | None = token_file.load() if token_file else None
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport, verify=verify
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def register(self, registration: AgentRegistration) -> Registered:
        """``POST /api/v1/agents`` with the agent's own token when it has one (the
        registration token enrols new agents only), else, or when the coordinator no
        longer knows that token (401: the agent was reset), with the registration token.
        Keeps the returned token, in the token file too."""
        body = registration.model_dump(mode="json")
        data = None
        if self.token is not None:
            try:
                data = await self._call(
                    "POST", "/api/v1/agents", "register", json=body, unknown_agent_is_fatal=True
                )
            except CoordinatorRejected as exc:
                if exc.status != 401:
                    raise
        if data is None:
            data = await self._call(
                "POST",
                "/api/v1/agents",
                "register",
                token=self._registration_token,
                json=body,
                unknown_agent_is_fatal=True,
            )
        self.token = str(data["token"])
        if self._token_file is not None:
            self._token_file.save(self.token)
        return Registered(
            agent_id=str(data["agent"]["id"]),
            token=self.token,
            created=bool(data.get("created", False)),
            heartbeat_interval=float(data.get("heartbeat_interval") or 10.0),
            lease_seconds=float(data.get("lease_seconds") or 30.0),
        )

    async def heartbeat(
        self, agent_id: str, heartbeat: Heartbeat, *, timeout: float | None = None
    ) -> HeartbeatReply:
        """``PUT /api/v1/agents/{id}``."""
        data = await self._call(
            "PUT",
            f"/api/v1/agents/{agent_id}",
            "heartbeat",
            json=heartbeat.model_dump(mode="json"),
            timeout=timeout,
        )
        return HeartbeatReply.model_validate(data)

    async def post_events(self, run_id: int, batch: RunEventBatch) -> None:
        await self._call(
            "POST", f"/api/v1/runs/{run_id}/events", "events", json=batch.model_dump(mode="json")
        )

    async def post_phase(self, run_id: int, phase: RunPhase) -> None:
        await self._call(
            "POST", f"/api/v1/runs/{run_id}/phase", "phase", json=phase.model_dump(mode="json")
        )

    async def post_result(self, run_id: int, result: RunResult) -> dict[str, Any]:
        reply: dict[str, Any] = await self._call(
            "POST", f"/api/v1/runs/{run_id}/result", "result", json=result.model_dump(mode="json")
        )
        return reply

    async def git_token(self, run_id: int, purpose: str) -> str | None:
        """A fresh git token for run ``run_id``'s ``fetch`` or ``deliver`` (None: not needed)."""
        reply = await self._call(
            "POST",
            f"/api/v1/runs/{run_id}/git-token",
            "git-token",
            json=GitTokenRequest(purpose=purpose).model_dump(mode="json"),
        )
        return GitTokenReply.model_validate(reply).token

    async def confirm_delivery(self, run_id: int) -> DeliveryConfirmation:
        """``POST /api/v1/runs/{id}/confirm-delivery``: the fencing check before a delivery.

        Raises:
            CoordinatorRejected: the run no longer holds its task (409) or is not ours (403).
            CoordinatorUnavailable, NotRegistered: no answer yet; ask again later.
        """
        reply = await self._call(
            "POST", f"/api/v1/runs/{run_id}/confirm-delivery", "confirm-delivery", json=None
        )
        return DeliveryConfirmation.model_validate(reply)

    async def _call(
        self,
        method: str,
        path: str,
        call: str,
        *,
        json: Any,
        token: str | None = None,
        timeout: float | None = None,
        unknown_agent_is_fatal: bool = False,
    ) -> Any:
        bearer = token or self.token
        if bearer is None:
            raise NotRegistered(call=call, detail="not registered yet")
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = await self._http.request(
                method, path, json=json, headers={"Authorization": f"Bearer {bearer}"}, **extra
            )
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(call=call, detail=_describe(exc)) from None
        status = response.status_code
        if status < 300:
            return response.json() if response.content else {}
        detail = f"HTTP {status} {_detail(response)}"
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise CoordinatorUnavailable(call=call, detail=detail, status=status)
        if status in (401, 404) and not unknown_agent_is_fatal:
            raise NotRegistered(call=call, detail=detail, status=status)
        raise CoordinatorRejected(call=call, detail=detail, status=status)


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:200]
