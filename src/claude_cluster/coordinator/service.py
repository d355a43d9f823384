"""The coordinator's application service: what the API, the webhooks and the CLI ask of it.

Each method is one repository transaction followed by its side effects: waking the
dispatcher, live events on the bus and observers (the GitHub loop comments on issues from
here). Every status change a transaction made is counted in ``claude_tasks_total`` by
:meth:`Coordinator._status_changed`, which the store calls after each commit. Routes and
the GitHub handlers change tasks only through this service (they read through
``coordinator.repo``); ``tests/unit/coordinator/test_status_owner.py`` holds them to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_cluster import metrics
from claude_cluster.coordinator.agent_client import AgentClient
from claude_cluster.coordinator.bus import WAKE, Bus
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.coordinator.dispatcher import (
    GITHUB_REPO,
    ContractProvider,
    Dispatcher,
    TokenProvider,
    no_contract,
    no_token,
)
from claude_cluster.coordinator.housekeeping import run_housekeeping
from claude_cluster.coordinator.reconciler import Reconciler
from claude_cluster.coordinator.store.repository import NewTask, Repository, RunEnd
from claude_cluster.coordinator.store.tables import Agent, ApiToken, Task, TaskEvent
from claude_cluster.coordinator.store.transitions import StatusChange
from claude_cluster.coordinator.token_holders import TokenHolders
from claude_cluster.domain.analysis import analyse
from claude_cluster.domain.retry import RetryPolicy
from claude_cluster.domain.states import Priority, RunStatus, TaskStatus
from claude_cluster.domain.wire import (
    AgentRegistration,
    DeliveryConfirmation,
    GitTokenReply,
    Heartbeat,
    HeartbeatReply,
    RunEvent,
    RunResult,
)
from claude_cluster.errors import ConfigError, Conflict, Forbidden
from claude_cluster.logging import get_logger

log = get_logger(__name__)


def hash_token(token: str) -> str:
    """Tokens are random and long, so a plain SHA-256 is a safe at-rest form."""
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(hash_token(given), hash_token(expected))


#: run events that change what the issue's progress comment shows
PROGRESS_EVENTS = frozenset({"phase", "baseline", "runner_finished", "round_progress"})


@dataclass(frozen=True)
class TaskChange:
    """What observers hear after a task changed (committed)."""

    kind: str  # created, run_succeeded, run_failed, retry_scheduled, cancelled, ...
    task: Task
    run_end: RunEnd | None = None


Observer = Callable[[TaskChange], Awaitable[None]]


@dataclass(frozen=True)
class TaskRequest:
    title: str
    description: str
    github_repository: str
    github_issue_number: int
    priority: Priority | None = None
    requirements: list[str] | None = None
    labels: Sequence[str] = ()
    budget_usd: float | None = None
    test_command: str | None = None
    created_by: str = ""


def repository_url(repository: str, github_web_url: str) -> str:
    """What agents fetch for a task: GitHub's clone URL, or the local path / file:// URL."""
    if repository.startswith("file://"):
        return repository
    if GITHUB_REPO.match(repository):
        return f"{github_web_url.rstrip('/')}/{repository}.git"
    path = Path(repository).expanduser()
    if not path.is_absolute():
        raise ConfigError(
            f"github_repository {repository!r} is neither owner/name nor an absolute path "
            "or file:// URL"
        )
    return str(path)


#: seconds a task being moved to another agent is kept from the dispatcher
REQUEUE_HOLD = 30.0


class Coordinator:
    def __init__(
        self,
        settings: CoordinatorSettings,
        repo: Repository,
        bus: Bus,
        client: AgentClient,
        *,
        token_provider: TokenProvider = no_token,
        operator_contract: ContractProvider = no_contract,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.bus = bus
        self.client = client
        self.token_holders = TokenHolders(repo)
        self._tokens = token_provider
        self._contracts = operator_contract
        self.policy = RetryPolicy(
            max_retries=settings.task_retry_attempts,
            base_seconds=settings.retry_base_seconds,
            cap_seconds=settings.retry_max_seconds,
        )
        self.dispatcher = Dispatcher(
            repo,
            client,
            max_concurrent_tasks=settings.max_concurrent_tasks,
            sweep_interval=settings.sweep_interval,
            task_timeout=settings.task_timeout,
            cooldown_seconds=settings.agent_cooldown_seconds,
            token_provider=token_provider,
            operator_contract=operator_contract,
            on_change=self._dispatch_change,
        )
        self.reconciler = Reconciler(
            repo,
            client,
            policy=self.policy,
            lease_seconds=settings.run_lease_seconds,
            heartbeat_timeout=settings.agent_heartbeat_timeout,
            task_timeout=settings.task_timeout,
            sweep_interval=settings.sweep_interval,
            on_run_end=self._after_run_end,
            delivery_window=settings.delivery_window_seconds,
            probe_after=settings.heartbeat_interval / 2,
            probe_timeout=min(2.0, settings.agent_call_timeout),
            push_timeout=settings.agent_call_timeout,
        )
        self.observers: list[Observer] = []
        self._background: set[asyncio.Task[Any]] = set()
        repo.on_status_change = self._status_changed

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatcher, reconciler, housekeeping and the cross-replica wake listener, until
        ``stop``."""
        jobs = [
            asyncio.create_task(self.dispatcher.run(stop)),
            asyncio.create_task(self.reconciler.run(stop)),
            asyncio.create_task(run_housekeeping(self.repo, self.settings, stop)),
            asyncio.create_task(self._listen_for_wakes(stop)),
        ]
        await stop.wait()
        self.dispatcher.wake()  # it sleeps until a wake-up or its sweep; let it see the stop
        await asyncio.gather(*jobs[:3], return_exceptions=True)
        jobs[3].cancel()
        await self.settle()

    async def settle(self) -> None:
        """Wait for the observers and agent calls started in the background."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _listen_for_wakes(self, stop: asyncio.Event) -> None:
        try:
            async for _ in self.bus.subscribe(WAKE):
                self.dispatcher.wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Without the bus, other replicas' wake-ups arrive with the sweep instead.
            log.warning("wake_listener_stopped", error=str(exc))

    async def _wake_all(self, *, task_ready: bool = False) -> None:
        self.dispatcher.wake(task_ready=task_ready)
        await self.bus.publish(WAKE, {})

    def _spawn(self, coro: Awaitable[Any]) -> None:
        job = asyncio.ensure_future(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    @staticmethod
    def _status_changed(changes: list[StatusChange]) -> None:
        """Every committed status change, whichever query made it: counted once here."""
        for change in changes:
            metrics.TASKS_TOTAL.labels(change.status, change.priority).inc()

    async def _notify(self, change: TaskChange) -> None:
        await self.bus.publish(
            f"task:{change.task.id}",
            {"kind": change.kind, "task_id": change.task.id, "status": change.task.status},
        )
        for observer in self.observers:
            self._spawn(self._call_observer(observer, change))

    @staticmethod
    async def _call_observer(observer: Observer, change: TaskChange) -> None:
        try:
            await observer(change)
        except Exception:
            log.exception("observer_failed", task_id=change.task.id, kind=change.kind)

    # --- tasks ----------------------------------------------------------------------

    async def submit_task(self, request: TaskRequest) -> tuple[Task, bool]:
        """Analyse and queue a task; an open task for the same issue is returned instead."""
        analysis = analyse(request.title, request.description, request.labels)
        url = repository_url(request.github_repository, self.settings.github_web_url)
        task, created = await self.repo.create_task(
            NewTask(
                title=request.title,
                description=request.description,
                github_repository=request.github_repository,
                github_issue_number=request.github_issue_number,
                repository_url=url,
                priority=request.priority or analysis.priority,
                requirements=request.requirements
                if request.requirements is not None
                else analysis.requirements,
                preferences=analysis.preferences,
                labels=list(request.labels),
                complexity=analysis.complexity,
                estimated_duration_minutes=analysis.estimated_duration_minutes,
                budget_usd=request.budget_usd,
                test_command=request.test_command,
                created_by=request.created_by,
                required_runner=self._required_runner(request.github_repository),
            )
        )
        if created:
            log.info(
                "task_created",
                task_id=task.id,
                repository=task.github_repository,
                issue=task.github_issue_number,
                priority=task.priority,
            )
            await self._wake_all(task_ready=True)
            await self._notify(TaskChange("created", task))
        return task, created

    def _required_runner(self, repository: str) -> str | None:
        """The runner the operator's contract of ``repository`` names, known at creation
        (the repository's own file, which may name another, only an agent reads: when it
        does, that agent's refusal corrects the task's runner, SPEC §4b)."""
        contract = self._contracts(repository)
        return contract.runner if contract is not None else None

    async def cancel_task(self, task_id: int, reason: str = "cancelled by a user") -> Task:
        task, to_stop = await self.repo.cancel_task(task_id, reason)
        log.info("task_cancelled", task_id=task.id, reason=reason)
        if to_stop is not None:
            _run, agent = to_stop
            self._spawn(self.client.cancel(agent, task.id))
            await self._wake_all()
        await self._notify(TaskChange("cancelled", task))
        return task

    async def update_task(self, task_id: int, changes: dict[str, Any]) -> Task:
        """Change a live task's title, description, priority, requirements or budget."""
        task = await self.repo.update_task(task_id, changes)
        log.info("task_updated", task_id=task.id, fields=sorted(changes))
        if "priority" in changes:
            await self._wake_all()  # the queue's order changed
        await self._notify(TaskChange("updated", task))
        return task

    async def assign_task(self, agent_id: str, task_id: int) -> int:
        """Dispatch a queued task to one agent now (the seed's manual assignment)."""
        await self.repo.get_agent(agent_id)
        task = await self.repo.get_task(task_id)
        if task.status != TaskStatus.QUEUED.value:
            raise Conflict(f"task {task_id} is {task.status}; only queued tasks can be assigned")
        return await self.dispatcher.dispatch_once(only_task=task_id, only_agent=agent_id)

    async def retry_now(self, task_id: int, who: str = "a user") -> Task:
        """Skip a queued task's retry back-off: it is dispatched at the next free slot."""
        task = await self.repo.retry_now(task_id, who)
        log.info("task_retry_now", task_id=task.id, by=who)
        await self._wake_all()
        await self._notify(TaskChange("retry_now", task))
        return task

    async def requeue_task(self, task_id: int, agent_id: str, who: str = "a user") -> Task:
        """Move a task to ``agent_id``: its active run (if any) is stopped without counting
        a retry, then the task is dispatched to that agent now. When the agent cannot take
        it, the task stays queued for the dispatcher."""
        await self.repo.get_agent(agent_id)  # 404 before anything changes
        # held, so that the dispatcher cannot hand it back to another agent before the
        # assignment below claims it for this one
        task, to_stop = await self.repo.release_task(
            task_id, f"{who} moved the task to agent {agent_id}", hold_seconds=REQUEUE_HOLD
        )
        if to_stop is not None:
            _run, agent = to_stop
            self._spawn(self.client.cancel(agent, task.id))
            await self._notify(TaskChange("requeued", task))
        log.info("task_requeued", task_id=task.id, agent_id=agent_id, by=who)
        dispatched = await self.dispatcher.dispatch_once(only_task=task_id, only_agent=agent_id)
        if not dispatched:  # the agent is full, draining or offline: any agent may take it
            await self.retry_now(task_id, f"{who} (agent {agent_id} could not take it)")
            raise Conflict(
                f"agent {agent_id} cannot take task {task_id} now (full, draining or "
                "offline); the task is queued for any agent"
            )
        return await self.repo.get_task(task_id)

    # --- agents ---------------------------------------------------------------------

    async def register_agent(
        self, reg: AgentRegistration, *, replace: bool = False, keep_token: str | None = None
    ) -> tuple[Agent, str, bool]:
        """Enrol or re-register an agent; returns it, its token and whether it is new.

        Args:
            replace: the caller may register an existing agent again (its own token or an
                admin); without it only a new (or reset) agent id is accepted.
            keep_token: the agent's own token, presented by it: it stays valid. Otherwise
                a new token is issued.

        Raises:
            Forbidden: the id is enrolled and the caller may not replace it.
        """
        token = keep_token or secrets.token_urlsafe(32)
        agent, created, lost = await self.repo.register_agent(
            reg,
            token_hash=hash_token(token),
            max_agents=self.settings.max_agents,
            policy=self.policy,
            replace=replace,
        )
        self.token_holders.forget_agent(agent.id)
        log.info(
            "agent_registered",
            agent_id=agent.id,
            created=created,
            runs_lost=len(lost),
            url=agent.url,
        )
        for end in lost:
            await self._after_run_end(end)
        await self._wake_all()
        return agent, token, created

    # --- people's tokens --------------------------------------------------------------

    async def create_api_token(self, name: str, role: str) -> tuple[ApiToken, str]:
        """A new API token with ``role`` (admin or viewer); the token is returned once."""
        token = "cc_" + secrets.token_urlsafe(32)
        row = await self.repo.add_api_token(name, hash_token(token), role)
        log.info("api_token_created", token_id=row.id, name=name, role=role)
        return row, token

    async def revoke_api_token(self, token_id: int) -> ApiToken:
        row = await self.repo.revoke_api_token(token_id)
        log.info("api_token_revoked", token_id=token_id)
        return row

    async def reset_agent(self, agent_id: str) -> Agent:
        """Revoke the agent's token so that it may enrol again with the registration token."""
        agent = await self.repo.reset_agent_token(agent_id)
        self.token_holders.forget_agent(agent_id)
        log.info("agent_reset", agent_id=agent_id)
        return agent

    async def mark_agent_ready(self, agent_id: str) -> Agent:
        """Clear the agent's not-ready reason and fault streak (an operator fixed it)."""
        agent = await self.repo.mark_agent_ready(agent_id)
        log.info("agent_marked_ready", agent_id=agent_id)
        await self._wake_all()
        return agent

    async def heartbeat(self, agent_id: str, hb: Heartbeat) -> HeartbeatReply:
        reply, has_room = await self.repo.heartbeat(agent_id, hb)
        if has_room:
            self.dispatcher.wake()
        return reply

    async def drain_agent(self, agent_id: str, draining: bool = True) -> Agent:
        agent = await self.repo.set_draining(agent_id, draining)
        log.info("agent_drain", agent_id=agent_id, draining=draining)
        if not draining:
            await self._wake_all()
        return agent

    async def _dispatch_change(self, kind: str, task: Task) -> None:
        """The dispatcher claimed a task (``assigned``), an agent took the run
        (``accepted``: the GitHub loop's start comment) or refused it (``dispatch_failed``)."""
        await self._notify(TaskChange(kind, task))

    # --- run reports ----------------------------------------------------------------

    async def record_events(self, run_id: int, agent_id: str, events: Sequence[RunEvent]) -> int:
        count, stored = await self.repo.record_events(run_id, agent_id, events)
        for event in stored:
            await self.bus.publish(f"task:{event.task_id}", _event_message(event))
        # a new step of the run (workspace, setup, agent, tests, deliver), the baseline's
        # counts and an agent round's turns and cost, finished or so far, are news for
        # observers (the issue's progress comment, which rate-limits its own edits)
        for task_id in {event.task_id for event in stored if event.kind in PROGRESS_EVENTS}:
            await self._notify(TaskChange("progress", await self.repo.get_task(task_id)))
        return count

    async def set_phase(self, run_id: int, agent_id: str, phase: str) -> Task:
        task = await self.repo.set_phase(run_id, agent_id, phase)
        await self._notify(TaskChange("phase", task))
        return task

    async def git_token(self, run_id: int, agent_id: str, purpose: str) -> GitTokenReply:
        """A fresh token for one git operation of an active run (``fetch`` or ``deliver``).

        Asked for when it is needed, never carried by the dispatch: a run of any length
        pushes with a token minted moments before. Only the run's own agent gets one, and
        only while the run is active.
        """
        if purpose == "deliver":
            # the deliver token is issued only with the fencing check
            return GitTokenReply(token=(await self.confirm_delivery(run_id, agent_id)).token)
        run = await self.repo.get_run(run_id)
        if run.agent_id != agent_id:
            raise Forbidden(f"run {run_id} is not run by agent {agent_id}")
        if run.status not in (RunStatus.DISPATCHING, RunStatus.RUNNING):
            raise Conflict(f"run {run_id} is {run.status}, not active: no token")
        task = await self.repo.get_task(run.task_id)
        token = None
        if GITHUB_REPO.match(task.github_repository):
            token = await self._tokens(task.github_repository, purpose)
        log.info("git_token_issued", run_id=run_id, agent_id=agent_id, purpose=purpose,
                 repository=task.github_repository, issued=token is not None)  # fmt: skip
        return GitTokenReply(token=token)

    async def confirm_delivery(self, run_id: int, agent_id: str) -> DeliveryConfirmation:
        """The fencing check before a delivery (SPEC §5 Fencing): answered from the
        database in one transaction; with it the deliver token. A refusal is a
        :class:`Conflict` (409) or :class:`Forbidden` (403) saying why."""
        try:
            run, task = await self.repo.confirm_delivery(run_id, agent_id)
        except (Conflict, Forbidden) as exc:
            metrics.DELIVERY_CONFIRMATIONS.labels("refused").inc()
            log.warning("delivery_refused", run_id=run_id, agent_id=agent_id, reason=str(exc))
            raise
        metrics.DELIVERY_CONFIRMATIONS.labels("confirmed").inc()
        token = None
        if GITHUB_REPO.match(task.github_repository):
            token = await self._tokens(task.github_repository, "deliver")
        log.info("delivery_confirmed", run_id=run_id, agent_id=agent_id, task_id=task.id,
                 repository=task.github_repository, token=token is not None)  # fmt: skip
        assert run.delivery_confirmed_at is not None
        return DeliveryConfirmation(
            run_id=run.id,
            confirmed_at=run.delivery_confirmed_at,
            deliver_within_seconds=self.settings.delivery_window_seconds,
            token=token,
        )

    async def finish_run(self, run_id: int, agent_id: str, result: RunResult) -> RunEnd:
        end = await self.repo.finish_run(
            run_id,
            agent_id,
            result,
            self.policy,
            cooldown_seconds=self.settings.agent_cooldown_seconds,
        )
        if not end.already_finished:
            await self._after_run_end(end)
        return end

    async def _after_run_end(self, end: RunEnd) -> None:
        run, task = end.run, end.task
        metrics.RUNS_TOTAL.labels(run.error_category or run.status).inc()
        metrics.RUN_COST_USD.inc(run.cost_usd or 0.0)
        if run.ended_at is not None:
            metrics.TASK_DURATION.observe((run.ended_at - run.started_at).total_seconds())
        log.info(
            "run_finished",
            task_id=task.id,
            run_id=run.id,
            agent_id=run.agent_id,
            outcome=run.status,
            category=run.error_category,
            task_status=task.status,
            cost_usd=run.cost_usd,
        )
        if end.retried:
            self.dispatcher.wake_later(end.delay_seconds + 0.01)
        await self._wake_all()
        kind = (
            "run_succeeded"
            if run.status == "succeeded"
            else ("retry_scheduled" if end.retried else "run_failed")
        )
        await self._notify(TaskChange(kind, task, end))

    async def note(self, task_id: int, kind: str, message: str) -> None:
        """Put a line on a task's log that changes nothing else (an ignored GitHub edit)."""
        await self.repo.add_task_event(task_id, kind, message)
        log.info("task_note", task_id=task_id, kind=kind)

    async def events(self, task_id: int, after_id: int = 0) -> Sequence[TaskEvent]:
        return await self.repo.list_events(task_id, after_id=after_id)

    # --- GitHub ---------------------------------------------------------------------

    async def set_task_status(
        self, task_id: int, target: TaskStatus, message: str, **fields: Any
    ) -> Task:
        """A status change from outside a run (a merged or closed pull request)."""
        task, to_stop = await self.repo.set_task_status(task_id, target, message, **fields)
        if to_stop is not None:
            _run, agent = to_stop
            self._spawn(self.client.cancel(agent, task.id))
            await self._wake_all()
        log.info("task_status_set", task_id=task.id, status=task.status, reason=message)
        await self._notify(TaskChange(target.value, task))
        return task

    async def attach_pull_request(self, task_id: int, number: int, url: str) -> bool:
        """Record the pull request a task's run opened; ``True`` when it is new to the task.

        A running task whose run no longer exists moves to ``review`` now (see
        :meth:`Repository.attach_pull_request`)."""
        task, new = await self.repo.attach_pull_request(task_id, number, url)
        log.info("pull_request_attached", task_id=task.id, pr=number, new=new)
        await self._notify(TaskChange("pull_request", task))
        return new

    async def queue_feedback(self, task_id: int, feedback: str) -> tuple[Task, str]:
        """Review feedback for a task: a follow-up run now, or after the active one
        (see :meth:`Repository.add_feedback` for the outcomes)."""
        task, outcome = await self.repo.add_feedback(task_id, feedback)
        log.info("feedback_received", task_id=task.id, outcome=outcome)
        if outcome != "deferred":
            await self._wake_all()
            await self._notify(TaskChange("feedback_queued", task))
        return task, outcome

    async def queue_deferred_feedback(self, task_id: int) -> Task | None:
        """Start the follow-up for feedback that arrived while a run was active."""
        task = await self.repo.take_deferred_feedback(task_id)
        if task is not None:
            log.info("deferred_feedback_queued", task_id=task.id)
            await self._wake_all()
            await self._notify(TaskChange("feedback_queued", task))
        return task


def _event_message(event: TaskEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "task_id": event.task_id,
        "run_id": event.run_id,
        "seq": event.seq,
        "kind": event.kind,
        "level": event.level,
        "message": event.message,
        "timestamp": event.timestamp.isoformat(),
    }
