"""How the coordinator calls agents: ``POST /execute_task`` and ``POST /cancel_task/{id}``,
with the bearer secret each agent chose at registration, over HTTPS verified against the
cluster CA (``TLS_CA_FILE``) when the agents serve TLS."""

from __future__ import annotations

import errno
import ssl

import httpx

from claude_cluster.coordinator.store.tables import Agent
from claude_cluster.domain.wire import ExecuteTaskRequest
from claude_cluster.errors import AgentCallError


class AgentClient:
    def __init__(self, *, timeout: float = 10.0, verify: ssl.SSLContext | bool = True) -> None:
        self._http = httpx.AsyncClient(
            timeout=timeout,
            verify=verify,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )

    async def close(self) -> None:
        await self._http.aclose()

    @staticmethod
    def _headers(agent: Agent) -> dict[str, str]:
        return {"Authorization": f"Bearer {agent.call_secret}"} if agent.call_secret else {}

    async def execute(self, agent: Agent, request: ExecuteTaskRequest) -> None:
        """Hand a run to the agent. 200/202 (also for a repeated run id) means accepted."""
        try:
            response = await self._http.post(
                f"{agent.url}/execute_task",
                content=request.model_dump_json(),
                headers={**self._headers(agent), "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise AgentCallError(
                agent_id=agent.id, run_id=request.run_id, reason=type(exc).__name__
            ) from exc
        if response.status_code not in (200, 202):
            raise AgentCallError(
                agent_id=agent.id,
                run_id=request.run_id,
                reason=f"HTTP {response.status_code} {response.text[:200]}",
            )

    async def probe(self, agent: Agent, *, timeout: float) -> str:
        """``GET {url}/health``: ``alive`` (anything answered), ``refused`` (the host
        refused the connection: nothing listens, the process is gone) or ``unknown``
        (timeout, unreachable host, name or TLS failure: the lease decides)."""
        try:
            await self._http.get(f"{agent.url}/health", timeout=timeout)
        except httpx.ConnectError as exc:
            return "refused" if _refused(exc) else "unknown"
        except httpx.HTTPError:
            return "unknown"
        return "alive"

    async def cancel(self, agent: Agent, task_id: int) -> bool:
        """Ask the agent to stop a task's run; False when it could not be reached."""
        try:
            response = await self._http.post(
                f"{agent.url}/cancel_task/{task_id}", headers=self._headers(agent)
            )
        except httpx.HTTPError:
            return False
        return response.status_code in (200, 202, 404)


def _refused(exc: BaseException) -> bool:
    """Whether a connection error was a refusal (ECONNREFUSED) somewhere down its chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        if isinstance(current, OSError) and current.errno == errno.ECONNREFUSED:
            return True
        current = current.__cause__ or current.__context__
    return "connection refused" in str(exc).lower()
