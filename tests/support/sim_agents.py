"""Simulated agents: real HTTP servers on loopback that speak the agent protocol.

One uvicorn server hosts any number of agents under ``/a/<agent_id>/``; each registers with
the coordinator (with that URL), heartbeats the runs it holds and behaves as told:

- ``complete``: accept, then deliver at once (no-op work): confirm the delivery with the
  coordinator (the fencing check real agents make before they push) and report a
  successful result; a refused confirmation discards the run, as a real agent does;
- ``hold``: accept and keep the run (heartbeating it) until :meth:`SimAgents.finish`;
- ``refuse``: answer 503 (full);
- ``slow``: never answer within the coordinator's call timeout;
- ``vanish``: stop heartbeating and refuse connections (see :meth:`SimAgents.vanish`).

Used by the scheduler tests and by ``bench/dispatch.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

from tests.support.servers import AsyncServer

REGISTRATION_TOKEN = "test-registration-token-0123456789"
SECRET = "sim-agent-secret-0123456789"


@dataclass
class SimAgent:
    id: str
    behaviour: str = "complete"
    capacity: int = 3
    specialties: list[str] = field(default_factory=lambda: ["general"])
    token: str = ""
    held: dict[int, dict[str, Any]] = field(default_factory=dict)
    received: list[tuple[int, float]] = field(default_factory=list)  # (run_id, monotonic time)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every /execute_task body
    heartbeating: bool = True
    #: what the agent's readiness checks say (None = ready), sent at registration and on
    #: every heartbeat
    not_ready: str | None = None
    #: the runners the agent offers, sent at registration and on every heartbeat (None:
    #: not told, as an older agent)
    runners: list[str] | None = None


class SimAgents:
    def __init__(self, coordinator_url: str, *, heartbeat_interval: float = 0.5) -> None:
        self.coordinator_url = coordinator_url
        self.heartbeat_interval = heartbeat_interval
        self.agents: dict[str, SimAgent] = {}
        #: runs whose delivery the coordinator confirmed (what a real agent would push)
        self.delivered: set[int] = set()
        #: runs whose delivery the coordinator refused, so they were discarded
        self.discarded: set[int] = set()
        self._app = self._build_app()
        self._server = AsyncServer(self._app)
        self._http = httpx.AsyncClient(
            base_url=coordinator_url,
            timeout=10,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        self._jobs: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return self._server.url

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/a/{agent_id}/execute_task")
        async def execute(agent_id: str, request: Request) -> Response:
            agent = self.agents.get(agent_id)
            if agent is None or request.headers.get("authorization") != f"Bearer {SECRET}":
                return Response(status_code=401)
            body = await request.json()
            run_id = int(body["run_id"])
            agent.received.append((run_id, time.monotonic()))
            agent.bodies.append(body)
            if agent.behaviour == "refuse" or len(agent.held) >= agent.capacity:
                return Response(status_code=503)
            if agent.behaviour == "slow":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), timeout=30)
            if run_id in agent.held:
                return Response(status_code=200)
            agent.held[run_id] = body
            if agent.behaviour == "complete":
                self._spawn(self.deliver(agent_id, run_id))
            return Response(status_code=202)

        @app.post("/a/{agent_id}/cancel_task/{task_id}")
        async def cancel(agent_id: str, task_id: int) -> Response:
            agent = self.agents[agent_id]
            for run_id, body in list(agent.held.items()):
                if body["task_id"] == task_id:
                    del agent.held[run_id]
            return Response(status_code=200)

        return app

    def _spawn(self, coro: Any) -> None:
        job = asyncio.ensure_future(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def __aenter__(self) -> SimAgents:
        await self._server.__aenter__()
        self._heartbeat_task = asyncio.create_task(self._heartbeats())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self._http.aclose()
        await self._server.__aexit__()

    async def add(
        self,
        agent_id: str,
        *,
        behaviour: str = "complete",
        capacity: int = 3,
        specialties: list[str] | None = None,
        not_ready: str | None = None,
        runners: list[str] | None = None,
    ) -> SimAgent:
        agent = SimAgent(agent_id, behaviour, capacity, specialties or ["general"])
        agent.not_ready = not_ready
        agent.runners = runners
        self.agents[agent_id] = agent
        response = await self._http.post(
            "/api/v1/agents",
            headers={"Authorization": f"Bearer {REGISTRATION_TOKEN}"},
            json={
                "id": agent_id,
                "name": agent_id,
                "url": f"{self.url}/a/{agent_id}",
                "specialties": agent.specialties,
                "capabilities": [],
                "max_concurrent_tasks": capacity,
                "secret": SECRET,
                "ready": not_ready is None,
                "not_ready_reason": not_ready,
                **({"runners": runners} if runners is not None else {}),
            },
        )
        response.raise_for_status()
        agent.token = response.json()["token"]
        return agent

    async def deliver(self, agent_id: str, run_id: int) -> None:
        """Confirm the delivery, then report success; a refusal (409) discards the run."""
        agent = self.agents[agent_id]
        response = await self._answered(agent, f"/api/v1/runs/{run_id}/confirm-delivery")
        if response.status_code == 200:
            self.delivered.add(run_id)
            await self.finish(agent_id, run_id)
        else:
            agent.held.pop(run_id, None)
            self.discarded.add(run_id)

    async def finish(self, agent_id: str, run_id: int, **result: Any) -> httpx.Response:
        """Report the run's result, retrying until the coordinator answers (as agents do)."""
        agent = self.agents[agent_id]
        agent.held.pop(run_id, None)
        body = {"succeeded": True, "message": "done", "cost_usd": 0.01, **result}
        return await self._answered(agent, f"/api/v1/runs/{run_id}/result", body)

    async def _answered(
        self, agent: SimAgent, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """POST as ``agent`` until the coordinator answers (any status below 500)."""
        for _ in range(50):
            try:
                response = await self._http.post(
                    path, json=body, headers={"Authorization": f"Bearer {agent.token}"}
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code < 500:
                return response
            await asyncio.sleep(0.1)
        raise AssertionError(f"POST {path} was never answered")

    async def report(
        self, agent_id: str, run_id: int, events: list[dict[str, Any]], *, first_seq: int = 0
    ) -> None:
        """Send run events (``kind``, ``message``, ``data``, ``level``) as the agent would."""
        agent = self.agents[agent_id]
        body = {
            "events": [
                {"seq": first_seq + i, "ts": datetime.now(UTC).isoformat(), **e}
                for i, e in enumerate(events)
            ]
        }
        response = await self._http.post(
            f"/api/v1/runs/{run_id}/events",
            json=body,
            headers={"Authorization": f"Bearer {agent.token}"},
        )
        response.raise_for_status()

    async def phase(self, agent_id: str, run_id: int, phase: str) -> None:
        response = await self._http.post(
            f"/api/v1/runs/{run_id}/phase",
            json={"phase": phase},
            headers={"Authorization": f"Bearer {self.agents[agent_id].token}"},
        )
        response.raise_for_status()

    async def git_token(
        self, agent_id: str, run_id: int, purpose: str = "deliver"
    ) -> httpx.Response:
        """Ask for the run's git token the way an agent does at delivery."""
        return await self._http.post(
            f"/api/v1/runs/{run_id}/git-token",
            json={"purpose": purpose},
            headers={"Authorization": f"Bearer {self.agents[agent_id].token}"},
        )

    async def confirm_delivery(self, agent_id: str, run_id: int) -> httpx.Response:
        """Ask whether the run may deliver, the way an agent does before its push."""
        return await self._http.post(
            f"/api/v1/runs/{run_id}/confirm-delivery",
            headers={"Authorization": f"Bearer {self.agents[agent_id].token}"},
        )

    def vanish(self, agent_id: str) -> None:
        """The agent dies: no more heartbeats, its runs silently gone."""
        agent = self.agents[agent_id]
        agent.heartbeating = False
        agent.behaviour = "refuse"
        agent.held.clear()

    async def heartbeat(self, agent: SimAgent) -> dict[str, Any]:
        response = await self._http.put(
            f"/api/v1/agents/{agent.id}",
            json={
                "status": "maintenance" if agent.not_ready else ("busy" if agent.held else "idle"),
                "current_load": min(1.0, len(agent.held) / agent.capacity),
                "active_task_count": len(agent.held),
                "run_ids": sorted(agent.held),
                "last_task_completed_at": datetime.now(UTC).isoformat(),
                "ready": agent.not_ready is None,
                "not_ready_reason": agent.not_ready,
                **({"runners": agent.runners} if agent.runners is not None else {}),
            },
            headers={"Authorization": f"Bearer {agent.token}"},
        )
        response.raise_for_status()
        reply: dict[str, Any] = response.json()
        for run_id in reply["stop_run_ids"]:
            agent.held.pop(run_id, None)
        return reply

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            for agent in list(self.agents.values()):
                if agent.heartbeating and agent.token:
                    with contextlib.suppress(httpx.HTTPError):
                        await self.heartbeat(agent)

    def all_received(self) -> list[int]:
        return [run_id for agent in self.agents.values() for run_id, _ in agent.received]
