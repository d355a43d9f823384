"""The chaos scenarios, at any scale: each builds its cluster in a :class:`Lab`, injects
its faults, waits for the work to end and returns its :class:`Figures`. ``tests/chaos``
runs them small and asserts the invariants; ``bench/chaos.py`` runs them large and prints
the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import httpx

from tests.support.chaos import Agent, Figures, Lab, seconds_between

#: how every scenario's coordinators are tightened (said in the figures)
FAST = {
    "HEARTBEAT_INTERVAL": "1",
    "RUN_LEASE_SECONDS": "4",
    "SWEEP_INTERVAL": "0.5",
    "RETRY_BASE_SECONDS": "0.5",
    "RETRY_MAX_SECONDS": "1",
    "AGENT_COOLDOWN_SECONDS": "0.5",
    "AGENT_CALL_TIMEOUT": "2",
}


def described(settings: dict[str, str]) -> str:
    keys = ("RUN_LEASE_SECONDS", "HEARTBEAT_INTERVAL", "SWEEP_INTERVAL", "RETRY_BASE_SECONDS")
    return " ".join(f"{k}={settings[k]}" for k in keys if k in settings) or "default settings"


async def until(
    probe: Callable[[], Awaitable[object]], timeout: float, what: str, interval: float = 0.1
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)


class SteadyLoad:
    """Submits a task every ``every`` seconds in the background until stopped."""

    def __init__(self, lab: Lab, api: httpx.AsyncClient, every: float) -> None:
        self.lab, self.api, self.every = lab, api, every
        self.ids: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ids.append(await self.lab.submit(self.api))
            await asyncio.sleep(self.every)

    def start(self) -> SteadyLoad:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --- agent kill -9 mid-run -------------------------------------------------------------


async def agent_kill(
    lab: Lab,
    *,
    kills: int,
    agents: int = 3,
    work_seconds: float = 1.5,
    load_every: float = 1.0,
    settings: dict[str, str] | None = None,
) -> Figures:
    """Agents under a steady load (a task every ``load_every`` s); ``kills`` times, an
    agent is killed with -9 while its runner works, and started again once its task runs
    elsewhere. Recovery: kill → the task's next run accepted by another agent."""
    settings = FAST if settings is None else settings
    coordinator = lab.coordinator(**settings)
    fleet = [
        lab.agent(f"agent-{i}", coordinator.url, work_seconds=work_seconds,
                  MAX_CONCURRENT_TASKS="2")
        for i in range(agents)
    ]  # fmt: skip
    figures = Figures("agent kill -9 mid-run", settings=described(settings))
    async with lab.api(coordinator.url) as api:
        load = SteadyLoad(lab, api, every=load_every).start()
        try:
            for _ in range(kills):
                run = await until(lambda: _victim(lab, fleet), 60, "a run in its runner")
                agent = lab.agents[run["agent_id"]]
                killed_at = time.time()
                agent.kill()
                figures.faults += 1
                moved = await until(
                    lambda run=run: _next_run_accepted(lab, run), 120, "the task running again"
                )
                recovery = seconds_between(killed_at, moved["accepted_at"])
                assert recovery is not None
                figures.recovery.append(recovery)
                await asyncio.to_thread(agent.start)
        finally:
            await load.stop()
        figures.tasks = len(load.ids)
        figures.lost, figures.duplicated, figures.notes = await lab.invariants(
            load.ids, timeout=120
        )
    return figures


async def _victim(lab: Lab, fleet: list[Agent]) -> object:
    """A first attempt whose runner is working, on an agent that is up."""
    alive = {a.id for a in fleet if a.proc is not None}
    for run in await lab.active_runs():
        if (
            run["status"] == "running"
            and run["attempt"] == 1
            and run["agent_id"] in alive
            and lab.runner_started(run["id"])
        ):
            return run
    return None


async def _next_run_accepted(lab: Lab, run: object) -> object:
    for later in await lab.runs(run["task_id"]):  # type: ignore[index]
        if later["attempt"] > run["attempt"] and later["accepted_at"] is not None:  # type: ignore[index]
            return later
    return None
