"""A property test of task state: random sequences of what the API, agents, GitHub and
time do to tasks, on both backends, with the invariants checked after every step.

Each step calls the coordinator service the way its caller does (the routes, the agent
reports, the GitHub event handler, the reconciler's sweeps); pushes go over real HTTP to an
agent server that accepts or refuses. After each step:

- at most one active run per task;
- ``attempts`` never decreases, and equals the number of runs;
- no terminal task holds an agent: it has no active run, and every agent's
  ``active_task_count`` equals its active runs;
- every status change the store reported is in ``TRANSITIONS``, and the last one of each
  task is the status in the database (nothing moved a task behind the owner's back).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from claude_cluster.coordinator.agent_client import AgentClient
from claude_cluster.coordinator.bus import LocalBus
from claude_cluster.coordinator.reconciler import Reconciler
from claude_cluster.coordinator.service import Coordinator, TaskRequest
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.transitions import StatusChange
from claude_cluster.domain.states import (
    ACTIVE_RUN_STATUSES,
    TERMINAL_TASK_STATUSES,
    TRANSITIONS,
    ErrorCategory,
    TaskStatus,
)
from claude_cluster.domain.wire import AgentRegistration, Heartbeat, RunResult
from claude_cluster.errors import Conflict
from tests.conftest import coordinator_settings
from tests.support import databases
from tests.support.servers import ServerThread

pytestmark = pytest.mark.timeout(300)

AGENTS = ("a1", "a2")
SECRET = "state-machine-agent-secret"
OUTCOMES = ["success", "success_pr", *[c.value for c in ErrorCategory]]


class AgentServer:
    """Agents that accept every push (202) unless told to refuse (503)."""

    def __init__(self) -> None:
        self.refusing: set[str] = set()
        app = FastAPI()

        @app.post("/a/{agent_id}/execute_task")
        async def execute(agent_id: str, request: Request) -> Response:
            if request.headers.get("authorization") != f"Bearer {SECRET}":
                return Response(status_code=401)
            await request.body()
            return Response(status_code=503 if agent_id in self.refusing else 202)

        @app.post("/a/{agent_id}/cancel_task/{task_id}")
        async def cancel(agent_id: str, task_id: int) -> Response:
            return Response(status_code=200)

        self.server = ServerThread(app)


@pytest.fixture(scope="module")
def agent_server() -> Iterator[AgentServer]:
    agents = AgentServer()
    agents.server.start()
    try:
        yield agents
    finally:
        agents.server.stop()


class TaskStateMachine(RuleBasedStateMachine):
    #: set per test: a fresh database URL per example, and what drops it
    new_database: Callable[[], tuple[str, Callable[[], None]]]
    agents: AgentServer

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.db_url, self.drop_database = self.new_database()
        self.agents.refusing.clear()
        s = coordinator_settings(
            self.db_url,
            run_lease_seconds=0.001,  # every run not mentioned since the last step is lost
            retry_base_seconds=0.001,
            retry_max_seconds=0.001,
            agent_cooldown_seconds=0.001,
            max_concurrent_tasks=3,
        )
        self.engine = create_engine(s.database_url)
        repo = Repository(sessionmaker(self.engine), postgres=self.db_url.startswith("postgres"))
        self.client = AgentClient(timeout=5)
        self.coordinator = Coordinator(s, repo, LocalBus(), self.client)
        self.changes: list[StatusChange] = []
        service_hook = repo.on_status_change
        assert service_hook is not None

        def record(changes: list[StatusChange]) -> None:
            self.changes.extend(changes)
            service_hook(changes)

        repo.on_status_change = record
        self.silence = Reconciler(
            repo,
            self.client,
            policy=self.coordinator.policy,
            lease_seconds=3600,
            heartbeat_timeout=0.001,  # every agent that did not just heartbeat goes offline
            task_timeout=3600,
            sweep_interval=1,
            on_run_end=self.coordinator._after_run_end,
        )
        self.attempts: dict[int, int] = {}

    def run(self, coro: Any) -> Any:
        async def step() -> Any:
            try:
                return await coro
            finally:
                await self.coordinator.dispatcher.settle()
                await self.coordinator.settle()

        return self.loop.run_until_complete(step())

    def teardown(self) -> None:
        try:
            self.run(self.client.close())
            self.loop.run_until_complete(self.engine.dispose())
        finally:
            self.loop.close()
            self.drop_database()

    async def _tasks(self) -> list[Any]:
        return list(await self.coordinator.repo.list_tasks(limit=1000))

    async def _active_runs(self) -> list[Any]:
        runs = []
        for agent_id in AGENTS:
            runs += await self.coordinator.repo.agent_runs(agent_id, active_only=True)
        return sorted(runs, key=lambda r: r.id)

    async def _pick_task(self, index: int) -> int | None:
        tasks = await self._tasks()
        return tasks[index % len(tasks)].id if tasks else None

    async def _pick_run(self, index: int) -> Any:
        runs = await self._active_runs()
        return runs[index % len(runs)] if runs else None

    # --- setup ---------------------------------------------------------------------

    @initialize()
    def register_agents(self) -> None:
        for agent_id in AGENTS:
            self.run(self._register(agent_id))

    async def _register(self, agent_id: str) -> None:
        await self.coordinator.register_agent(
            AgentRegistration(
                id=agent_id,
                name=agent_id,
                url=f"{self.agents.server.url}/a/{agent_id}",
                specialties=["general"],
                max_concurrent_tasks=2,
                secret=SECRET,
            ),
            replace=True,  # a restart presents the agent's own token
        )

    # --- the API -------------------------------------------------------------------

    @rule(issue=st.integers(1, 5))
    def create_task(self, issue: int) -> None:
        self.run(
            self.coordinator.submit_task(
                TaskRequest(
                    title=f"issue {issue}",
                    description="do it",
                    github_repository="acme/app",
                    github_issue_number=issue,
                    requirements=[],
                )
            )
        )

    @rule(index=st.integers(0, 20))
    def cancel_task(self, index: int) -> None:
        async def go() -> None:
            task_id = await self._pick_task(index)
            if task_id is not None:
                try:
                    await self.coordinator.cancel_task(task_id)
                except Conflict:
                    pass

        self.run(go())

    @rule(index=st.integers(0, 20), priority=st.sampled_from(["low", "urgent"]))
    def update_task(self, index: int, priority: str) -> None:
        async def go() -> None:
            task_id = await self._pick_task(index)
            if task_id is not None:
                try:
                    await self.coordinator.update_task(task_id, {"priority": priority})
                except Conflict:
                    pass

        self.run(go())

    # --- the dispatcher and the agents ---------------------------------------------

    @rule()
    def dispatch(self) -> None:
        self.run(self.coordinator.dispatcher.dispatch_once())

    @rule(agent=st.sampled_from(AGENTS), refuse=st.booleans())
    def agent_refuses(self, agent: str, refuse: bool) -> None:
        (self.agents.refusing.add if refuse else self.agents.refusing.discard)(agent)

    @rule(index=st.integers(0, 20), phase=st.sampled_from(["in_progress", "testing"]))
    def report_phase(self, index: int, phase: str) -> None:
        async def go() -> None:
            run = await self._pick_run(index)
            if run is not None:
                await self.coordinator.set_phase(run.id, run.agent_id, phase)

        self.run(go())

    @rule(index=st.integers(0, 20), outcome=st.sampled_from(OUTCOMES), twice=st.booleans())
    def report_result(self, index: int, outcome: str, twice: bool) -> None:
        async def go() -> None:
            run = await self._pick_run(index)
            if run is None:
                return
            if outcome.startswith("success"):
                pr = outcome == "success_pr"
                result = RunResult(
                    succeeded=True,
                    branch=f"claude/task-{run.task_id}",
                    pr_number=run.task_id + 100 if pr else None,
                    pr_url=f"https://github.com/acme/app/pull/{run.task_id + 100}" if pr else None,
                )
            else:
                result = RunResult(succeeded=False, error_category=ErrorCategory(outcome))
            for _ in range(2 if twice else 1):
                await self.coordinator.finish_run(run.id, run.agent_id, result)

        self.run(go())

    @rule(agent=st.sampled_from(AGENTS))
    def agent_restarts(self, agent: str) -> None:
        self.run(self._register(agent))

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: str) -> None:
        async def go() -> None:
            held = await self.coordinator.repo.agent_runs(agent, active_only=True)
            await self.coordinator.heartbeat(agent, Heartbeat(run_ids=[r.id for r in held]))

        self.run(go())

    # --- GitHub ----------------------------------------------------------------------

    @rule(index=st.integers(0, 20))
    def pull_request_opened(self, index: int) -> None:
        async def go() -> None:
            task_id = await self._pick_task(index)
            if task_id is None:
                return
            url = f"https://github.com/acme/app/pull/{task_id + 100}"
            try:
                await self.coordinator.attach_pull_request(task_id, task_id + 100, url)
            except Conflict:
                pass

        self.run(go())

    @rule(index=st.integers(0, 20), merged=st.booleans())
    def pull_request_closed(self, index: int, merged: bool) -> None:
        async def go() -> None:
            task_id = await self._pick_task(index)
            if task_id is None:
                return
            target = TaskStatus.COMPLETED if merged else TaskStatus.FAILED
            try:
                await self.coordinator.set_task_status(task_id, target, "pull request closed")
            except Conflict:
                pass

        self.run(go())

    @rule(index=st.integers(0, 20))
    def review_feedback(self, index: int) -> None:
        async def go() -> None:
            task_id = await self._pick_task(index)
            if task_id is None:
                return
            try:
                await self.coordinator.queue_feedback(task_id, "please rename it")
            except Conflict:
                pass

        self.run(go())

    # --- time ------------------------------------------------------------------------

    @rule()
    def leases_expire(self) -> None:
        self.run(self.coordinator.reconciler.reconcile_once())

    @rule()
    def agents_go_silent(self) -> None:
        self.run(self.silence.reconcile_once())

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def task_state_is_consistent(self) -> None:
        self.loop.run_until_complete(self._check())

    async def _check(self) -> None:
        repo = self.coordinator.repo
        tasks = await self._tasks()
        active_by_agent: dict[str, int] = dict.fromkeys(AGENTS, 0)
        for task in tasks:
            runs = list(await repo.list_runs(task.id))
            active = [r for r in runs if r.status in ACTIVE_RUN_STATUSES]
            assert len(active) <= 1, f"task {task.id} has {len(active)} active runs"
            assert task.attempts >= self.attempts.get(task.id, 0), "attempts went down"
            assert task.attempts == len(runs)
            self.attempts[task.id] = task.attempts
            if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
                assert not active, f"task {task.id} is {task.status} with an active run"
            for run in active:
                active_by_agent[run.agent_id] += 1
        for agent in await repo.list_agents():
            assert agent.active_task_count == active_by_agent[agent.id], agent.id
        last: dict[int, str] = {}
        for change in self.changes:
            if change.previous is not None:
                assert TaskStatus(change.status) in TRANSITIONS[TaskStatus(change.previous)], change
            last[change.task_id] = change.status
        assert last == {t.id: t.status for t in tasks}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], tuple[str, Callable[[], None]]]:
    """A fresh migrated database per example (a copied SQLite file, a cloned PostgreSQL)."""
    if request.param == "postgres":
        request.getfixturevalue("_pg_template")

        def new_pg() -> tuple[str, Callable[[], None]]:
            name, url = databases.new_pg_database()
            return url, lambda: databases.drop_pg_database(name)

        return new_pg
    template = Path(databases.new_sqlite_database(tmp_path).removeprefix("sqlite:///"))
    counter = iter(range(1_000_000))

    def new_sqlite() -> tuple[str, Callable[[], None]]:
        path = tmp_path / f"example-{next(counter)}.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}", lambda: path.unlink(missing_ok=True)

    return new_sqlite


def test_task_state_holds_its_invariants(
    database_factory: Callable[[], tuple[str, Callable[[], None]]], agent_server: AgentServer
) -> None:
    TaskStateMachine.new_database = staticmethod(database_factory)  # type: ignore[assignment]
    TaskStateMachine.agents = agent_server
    run_state_machine_as_test(
        TaskStateMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            derandomize=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
