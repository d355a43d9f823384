"""The agent's HTTP API on ``AGENT_PORT``: what the coordinator (and an operator) calls.

=============================  ======  ==================================================
route                          auth    answer
=============================  ======  ==================================================
``GET /health``                none    ``{"status": "healthy", ...}``
``GET /metrics``               none    the agent's Prometheus metrics
``GET /status``                secret  runs held, load, capacity, version, draining
``POST /execute_task``         secret  202 accepted; 200 the same run again (duplicate);
                                       409 another run of the task is held; 503 full or
                                       draining
``POST /cancel_task/{task}``   secret  200 stopping; 404 no run of the task is held
=============================  ======  ==================================================

"secret" is ``Authorization: Bearer <the secret sent at registration>``, compared in
constant time; anything else gets 401.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Header, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from claude_cluster import __version__, metrics
from claude_cluster.agent.pool import Admission, JobPool
from claude_cluster.domain.wire import ExecuteTaskReply, ExecuteTaskRequest

__all__ = ["AgentIdentity", "create_agent_app"]


class AgentIdentity(Protocol):
    """What the API shows about the agent (the daemon provides it)."""

    agent_id: str
    secret: str
    started_at: float

    @property
    def registered(self) -> bool: ...

    @property
    def sandbox(self) -> str:
        """``on`` or ``off`` (``RUN_SANDBOX=off``: runs are not confined)."""
        ...


_REFUSALS = {
    Admission.TASK_BUSY: (status.HTTP_409_CONFLICT, "another run of this task is running here"),
    Admission.FULL: (status.HTTP_503_SERVICE_UNAVAILABLE, "no free slot"),
    Admission.DRAINING: (status.HTTP_503_SERVICE_UNAVAILABLE, "the agent is draining"),
    Admission.NOT_READY: (status.HTTP_503_SERVICE_UNAVAILABLE, "the agent is not ready"),
}


def create_agent_app(pool: JobPool, identity: AgentIdentity) -> FastAPI:
    """The agent's FastAPI app, serving ``pool`` on behalf of ``identity``."""
    app = FastAPI(title="claude-cluster agent", version=__version__, docs_url=None, redoc_url=None)

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        expected = identity.secret
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong bearer secret",
                headers={"WWW-Authenticate": "Bearer"},
            )

    secret = [Depends(authorized)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "healthy",
            "service": "claude-cluster-agent",
            "agent_id": identity.agent_id,
            "version": __version__,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.AGENT), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status", dependencies=secret)
    async def agent_status() -> dict[str, Any]:
        runs = [
            {
                "run_id": job.run_id,
                "task_id": job.request.task_id,
                "attempt": job.request.attempt,
                "repository": job.request.github_repository,
                "issue": job.request.github_issue_number,
                "started_at": job.started_at.isoformat(),
                "state": "working" if job.working else "reporting",
            }
            for job in pool.jobs.values()
        ]
        return {
            "agent_id": identity.agent_id,
            "version": __version__,
            "registered": identity.registered,
            "draining": pool.draining,
            "sandbox": identity.sandbox,
            "ready": pool.not_ready is None,
            "not_ready_reason": pool.not_ready,
            "capacity": pool.capacity,
            "active": pool.working,
            "load": pool.load,
            "uptime": round(time.monotonic() - identity.started_at, 3),
            "runs": runs,
        }

    @app.post("/execute_task", dependencies=secret, status_code=status.HTTP_202_ACCEPTED)
    async def execute_task(request: ExecuteTaskRequest, response: Response) -> ExecuteTaskReply:
        admission = pool.submit(request)
        if admission is Admission.DUPLICATE:
            response.status_code = status.HTTP_200_OK
            return ExecuteTaskReply(run_id=request.run_id, duplicate=True)
        if admission in _REFUSALS:
            code, detail = _REFUSALS[admission]
            raise HTTPException(code, detail)
        return ExecuteTaskReply(run_id=request.run_id)

    @app.post("/cancel_task/{task_id}", dependencies=secret)
    async def cancel_task(task_id: int) -> dict[str, Any]:
        run_id = pool.cancel_task(task_id)
        if run_id is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run of task {task_id} is held")
        return {"task_id": task_id, "run_id": run_id, "cancelling": True}

    return app
