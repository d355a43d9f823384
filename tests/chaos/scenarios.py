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

from tests.support.chaos import Agent, Figures, Lab, pct, seconds_between
from tests.support.sim_agents import SimAgents

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
    work_seconds: float = 3.0,
    load_every: float = 1.0,
    settings: dict[str, str] | None = None,
) -> Figures:
    """Agents under a steady load (a task every ``load_every`` s); ``kills`` times, an
    agent is killed with -9 while its runner works (started less than a third of
    ``work_seconds`` ago, so the kill lands before the delivery: a kill during the push is
    the gap SPEC §5 names), and started again once its task runs elsewhere. Recovery:
    kill → the task's next run accepted by another agent."""
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
                run = await until(
                    lambda: _victim(lab, fleet, within=work_seconds / 3), 60, "a run in its runner"
                )
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


async def _victim(lab: Lab, fleet: list[Agent], *, within: float) -> object:
    """A first attempt whose runner started ``within`` seconds ago, on an agent that is up."""
    alive = {a.id for a in fleet if a.proc is not None}
    for run in await lab.active_runs():
        if (
            run["status"] == "running"
            and run["attempt"] == 1
            and run["agent_id"] in alive
            and lab.runner_started(run["id"], within=within)
        ):
            return run
    return None


async def _next_run_accepted(lab: Lab, run: object) -> object:
    for later in await lab.runs(run["task_id"]):  # type: ignore[index]
        if later["attempt"] > run["attempt"] and later["accepted_at"] is not None:  # type: ignore[index]
            return later
    return None


# --- coordinator kill -9 during a burst, two replicas ----------------------------------


async def coordinator_kill_burst(
    lab: Lab,
    *,
    tasks: int,
    agents: int = 10,
    settings: dict[str, str] | None = None,
) -> Figures:
    """Two coordinator replicas on one PostgreSQL behind a load balancer; simulated agents
    (real HTTP, no-op work) take ``tasks`` submitted as fast as 16 clients can, and one
    replica is killed with -9 a third of the way in, then started again. Recovery: kill →
    each task that was active at the kill completed."""
    settings = FAST if settings is None else settings
    replicas = [lab.coordinator(**settings), lab.coordinator(**settings)]
    balancer = lab.proxy(c.port for c in replicas)
    figures = Figures(
        "coordinator kill -9 in a burst (2 replicas)",
        settings=f"{described(settings)}; simulated agents",
    )
    async with (
        SimAgents(balancer.url, heartbeat_interval=1.0) as sims,
        lab.api(balancer.url, timeout=30) as api,
    ):
        for i in range(agents):
            await sims.add(f"sim-{i:02d}", capacity=4)
        ids: list[int] = []
        semaphore = asyncio.Semaphore(16)
        killed = asyncio.Event()
        killed_at = 0.0
        active_at_kill: list[int] = []

        async def one() -> None:
            async with semaphore:
                ids.append(await lab.submit(api))

        async def killer() -> None:
            nonlocal killed_at, active_at_kill
            while len(ids) < tasks // 3:
                await asyncio.sleep(0.01)
            replicas[0].kill()
            killed_at = time.time()
            figures.faults += 1
            killed.set()
            active_at_kill = [r["task_id"] for r in await lab.active_runs()]
            await asyncio.sleep(2)
            await asyncio.to_thread(replicas[0].start)

        kill = asyncio.create_task(killer())
        await asyncio.gather(*(one() for _ in range(tasks)))
        await kill
        figures.tasks = len(set(ids))
        figures.lost, figures.duplicated, figures.notes = await lab.invariants(ids, timeout=180)
        figures.duplicated += _executed_twice(sims)
        rows = await lab.query(
            "SELECT id, completed_at FROM tasks WHERE id = ANY($1)", active_at_kill
        )
        figures.recovery = [
            s for r in rows if (s := seconds_between(killed_at, r["completed_at"])) is not None
        ]
        figures.notes.append(f"{len(active_at_kill)} runs active at the kill")
        figures.notes.append(f"{len(sims.discarded)} runs discarded (delivery refused)")
    return figures


def _executed_twice(sims: SimAgents) -> int:
    """Tasks for which the coordinator confirmed the delivery of more than one run (a
    simulated agent pushes nothing: the confirmation stands for the push)."""
    runs: dict[int, set[int]] = {}
    for agent in sims.agents.values():
        for body in agent.bodies:
            if int(body["run_id"]) in sims.delivered:
                runs.setdefault(int(body["task_id"]), set()).add(int(body["run_id"]))
    return sum(1 for r in runs.values() if len(r) > 1)


# --- PostgreSQL restarted under load ---------------------------------------------------


async def postgres_restart(
    lab: Lab,
    *,
    restarts: int = 1,
    tasks: int = 12,
    agents: int = 2,
    work_seconds: float = 4.0,
    down_seconds: float = 2.0,
    settings: dict[str, str] | None = None,
) -> Figures:
    """A coordinator and agents working through ``tasks``; while runs are in their
    runners, PostgreSQL is stopped (``-m immediate``: clients see a crash) for
    ``down_seconds`` and started again, ``restarts`` times. The coordinator must answer
    again without a restart of its own, and no run in flight may be stopped or lost.
    Recovery: PostgreSQL up again → the coordinator's ``/health`` is 200."""
    assert lab.pg is not None
    settings = {**FAST, "RUN_LEASE_SECONDS": "10"} if settings is None else settings
    coordinator = lab.coordinator(**settings)
    for i in range(agents):
        lab.agent(f"agent-{i}", coordinator.url, work_seconds=work_seconds)
    figures = Figures("PostgreSQL restarted under load", settings=described(settings))
    in_flight: set[int] = set()
    async with lab.api(coordinator.url) as api:
        ids = [await lab.submit(api) for _ in range(tasks)]
        for _ in range(restarts):
            working = await until(
                lambda: _runs_in_runner(lab), 60, "runs in their runners", interval=0.2
            )
            in_flight |= {r["id"] for r in working}
            await asyncio.to_thread(lab.pg.stop, "immediate")
            figures.faults += 1
            await asyncio.sleep(down_seconds)
            await asyncio.to_thread(lab.pg.start)
            up_at = time.time()
            await until(lambda: _healthy(api), 60, "the coordinator healthy again")
            figures.recovery.append(time.time() - up_at)
        figures.tasks = len(ids)
        figures.lost, figures.duplicated, figures.notes = await lab.invariants(ids, timeout=120)
    assert coordinator.alive()
    ended = await lab.query(
        "SELECT id, status, error_category FROM task_runs WHERE id = ANY($1)", list(in_flight)
    )
    stopped = [f"run {r['id']} {r['status']} {r['error_category']}" for r in ended
               if r["status"] != "succeeded"]  # fmt: skip
    figures.notes.append(f"{len(in_flight)} runs in flight, {len(stopped)} of them stopped")
    figures.notes += stopped
    figures.stopped = len(stopped)
    return figures


async def _runs_in_runner(lab: Lab) -> list[object]:
    return [
        r
        for r in await lab.active_runs()
        if r["status"] == "running" and lab.runner_started(r["id"])
    ]


async def _healthy(api: httpx.AsyncClient) -> bool:
    try:
        return (await api.get("/health")).status_code == 200
    except httpx.HTTPError:
        return False


# --- an agent partitioned from the coordinator past its lease --------------------------


async def partition(
    lab: Lab,
    *,
    partitions: int = 1,
    work_seconds: float = 8.0,
    settings: dict[str, str] | None = None,
) -> Figures:
    """Agent A reaches the coordinator, and the coordinator A, only through proxies;
    while A's runner works, both are cut for longer than the lease and A's work, then
    healed. The coordinator gives the task to agent B; A must not deliver it too.
    Recovery: cut → the task's next run accepted by B."""
    settings = FAST if settings is None else settings
    lease = float(settings.get("RUN_LEASE_SECONDS", "30"))
    coordinator = lab.coordinator(**settings)
    to_coordinator = lab.proxy([coordinator.port])
    agent_port = lab.free_port()
    to_agent = lab.proxy([agent_port])
    lab.agent(
        "agent-a", to_coordinator.url, work_seconds=work_seconds,
        AGENT_PORT=str(agent_port), AGENT_URL=to_agent.url,
    )  # fmt: skip
    figures = Figures(
        "agent partitioned past its lease",
        settings=f"{described(settings)}; a proxy cut both ways (bytes dropped, connections hang)",
    )
    ids: list[int] = []
    async with lab.api(coordinator.url) as api:
        for n in range(partitions):
            if n == 1:
                lab.agents["agent-b"].kill()  # B idle again: A gets the next task
            ids.append(await lab.submit(api))
            run = await until(
                lambda: _runner_on(lab, ids[-1], "agent-a"), 60, "A working on the task"
            )
            if "agent-b" not in lab.agents:
                lab.agent("agent-b", coordinator.url, work_seconds=1.0)
            elif lab.agents["agent-b"].proc is None:
                await asyncio.to_thread(lab.agents["agent-b"].start)
            # B's start-up (imports, sandbox canary) is not part of the recovery measured
            await until(lambda: _idle(lab, "agent-b"), 120, "agent B registered and idle")
            to_coordinator.cut()
            to_agent.cut()
            cut_at = time.time()
            figures.faults += 1
            moved = await until(
                lambda run=run: _next_run_accepted(lab, run), lease * 3 + 30, "the task on B"
            )
            recovery = seconds_between(cut_at, moved["accepted_at"])  # type: ignore[index]
            assert recovery is not None
            figures.recovery.append(recovery)
            # stay cut until A's runner is done, so that A has a result it wants to deliver
            await asyncio.sleep(max(0.0, cut_at + max(work_seconds, lease) + 2 - time.time()))
            to_coordinator.heal()
            to_agent.heal()
            await asyncio.sleep(lease)  # A hears back and must not deliver
        figures.tasks = len(ids)
        figures.lost, figures.duplicated, figures.notes = await lab.invariants(ids, timeout=60)
    return figures


async def _idle(lab: Lab, agent_id: str) -> bool:
    rows = await lab.query("SELECT status FROM agents WHERE id = $1", agent_id)
    return bool(rows) and rows[0]["status"] == "idle"


async def _runner_on(lab: Lab, task_id: int, agent_id: str) -> object:
    for run in await lab.runs(task_id):
        if (
            run["agent_id"] == agent_id
            and run["status"] == "running"
            and lab.runner_started(run["id"])
        ):
            return run
    return None


# --- the coordinator stopped with runs in flight ---------------------------------------


async def coordinator_stopped(
    lab: Lab,
    *,
    mode: str = "pause",
    down_seconds: float = 12.0,
    tasks: int = 4,
    agents: int = 2,
    work_seconds: float = 3.0,
    settings: dict[str, str] | None = None,
) -> Figures:
    """Runs in their runners when the coordinator is stopped for ``down_seconds`` (longer
    than the lease): ``pause`` = SIGSTOP then SIGCONT, ``kill`` = kill -9 then a new
    process on the same port. Every run in flight must deliver once after it returns,
    none stopped or lost. Recovery: the coordinator back (SIGCONT, or the new process
    started) → each task completed."""
    settings = FAST if settings is None else settings
    coordinator = lab.coordinator(**settings)
    for i in range(agents):
        lab.agent(f"agent-{i}", coordinator.url, work_seconds=work_seconds)
    figures = Figures(
        f"coordinator {'stopped (SIGSTOP)' if mode == 'pause' else 'killed'} "
        f"{down_seconds:g} s with runs in flight",
        settings=described(settings),
    )
    async with lab.api(coordinator.url) as api:
        ids = [await lab.submit(api) for _ in range(tasks)]
        working = await until(
            lambda: _all_in_runner(lab, min(tasks, agents * 3)), 60, "runs in their runners"
        )
        in_flight = [r["id"] for r in working]
        if mode == "pause":
            coordinator.pause()
        else:
            coordinator.kill()
        figures.faults += 1
        await asyncio.sleep(down_seconds)
        back_at = time.time()
        if mode == "pause":
            coordinator.resume()
        else:
            await asyncio.to_thread(coordinator.start)
        figures.tasks = len(ids)
        figures.lost, figures.duplicated, figures.notes = await lab.invariants(ids, timeout=90)
    ended = await lab.query(
        "SELECT id, status, error_category, ended_at FROM task_runs WHERE id = ANY($1)",
        in_flight,
    )
    stopped = [f"run {r['id']} {r['status']} {r['error_category']}" for r in ended
               if r["status"] != "succeeded"]  # fmt: skip
    figures.stopped = len(stopped)
    done = await lab.query("SELECT completed_at FROM tasks WHERE id = ANY($1)", ids)
    figures.recovery = [
        s for r in done if (s := seconds_between(back_at, r["completed_at"])) is not None
    ]
    figures.notes.append(f"{len(in_flight)} runs in flight, {len(stopped)} of them stopped")
    figures.notes += stopped
    return figures


async def _all_in_runner(lab: Lab, count: int) -> list[object] | None:
    working = await _runs_in_runner(lab)
    return working if len(working) >= count else None


# --- Redis down for a while --------------------------------------------------------------


async def redis_down(
    lab: Lab,
    *,
    down_seconds: float = 6.0,
    before_seconds: float = 4.0,
    after_seconds: float = 8.0,
    settings: dict[str, str] | None = None,
) -> Figures:
    """Two replicas fanning out over a Redis of their own. A run reports a line every
    0.3 s to replica A while a dashboard stream on replica B shows it; Redis is killed for
    ``down_seconds``, and tasks submitted meanwhile must still be dispatched. The live
    log must degrade to B's periodic re-read and come back to live when Redis does.
    Recovery: Redis back → the first log item shown on B within 1.5 s of its event."""
    settings = FAST if settings is None else settings
    redis = lab.redis()
    a = lab.coordinator(**settings, REDIS_URL=redis.url)
    b = lab.coordinator(**settings, REDIS_URL=redis.url)
    work = before_seconds + down_seconds + after_seconds + 4
    lab.agent("agent-live", a.url, work_seconds=work, tick=0.3, MAX_CONCURRENT_TASKS="1")
    figures = Figures("Redis down", settings=f"{described(settings)}; live log re-read every 5 s")
    received: dict[int, float] = {}
    async with lab.api(a.url) as api_a, lab.api(b.url) as api_b:
        live = await lab.submit(api_a)
        await until(lambda: _runner_on(lab, live, "agent-live"), 60, "the run working")
        lab.agent("agent-short", a.url, work_seconds=0.5)
        stream = asyncio.create_task(_follow(api_b, live, received))
        opened_at = time.time()
        await asyncio.sleep(before_seconds)
        down_at = time.time()
        redis.stop()
        figures.faults += 1
        during = [await lab.submit(api_b) for _ in range(3)]
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(redis.start)
        up_at = time.time()
        await asyncio.sleep(after_seconds)
        after = [await lab.submit(api_b) for _ in range(3)]
        ids = [live, *during, *after]
        figures.tasks = len(ids)
        # the live run works on for a few seconds after the last submission
        figures.lost, figures.duplicated, figures.notes = await lab.invariants(ids, timeout=90)
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await stream
    events = await lab.query(
        "SELECT id, timestamp FROM task_events WHERE task_id = $1 AND seq IS NOT NULL", live
    )
    delays: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for event in events:
        if event["id"] not in received:
            continue
        at = seconds_between(0.0, event["timestamp"]) or 0.0  # the event's own time
        if at < opened_at + 1:  # shown when the stream opened, not live
            continue
        delay = received[event["id"]] - at
        phase = "before" if at < down_at else "during" if at < up_at else "after"
        delays[phase].append(delay)
        if at >= up_at and delay < 1.5 and not figures.recovery:
            figures.recovery.append(received[event["id"]] - up_at)
    figures.live_log = {k: pct(v, 0.5) for k, v in delays.items()}
    figures.notes.append(
        "live log delay p50 "
        + ", ".join(f"{k} {v:.1f} s" if v is not None else f"{k} -"
                    for k, v in figures.live_log.items())
        + f"; {sum(len(v) for v in delays.values())} items shown live"
    )  # fmt: skip
    dispatch = await lab.query(
        "SELECT t.id, extract(epoch FROM r.accepted_at - t.created_at) AS s FROM tasks t "
        "JOIN task_runs r ON r.task_id = t.id AND r.attempt = 1 WHERE t.id = ANY($1)",
        during,
    )
    figures.notes.append(
        "dispatch during the outage: created → accepted "
        + ", ".join(f"{float(r['s']):.1f} s" for r in dispatch if r["s"] is not None)
    )
    return figures


async def _follow(api: httpx.AsyncClient, task_id: int, received: dict[int, float]) -> None:
    """Read the task's live log (Server-Sent Events) and note when each item arrives."""
    async with api.stream("GET", f"/tasks/{task_id}/stream", timeout=None) as response:
        response.raise_for_status()
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("id:") and event == "log":
                received.setdefault(int(line.split(":", 1)[1]), time.time())
