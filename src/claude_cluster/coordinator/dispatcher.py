"""The dispatcher: claims queued tasks for agents and pushes the runs to them.

Event driven: :meth:`Dispatcher.wake` (a task became queued, a slot freed, an agent
appeared) starts a dispatch pass at once; a sweep every ``SWEEP_INTERVAL`` seconds catches
everything else (retry back-offs that expired, wake-ups from other replicas lost with the
bus). Claiming is one transaction in the repository; the push happens after the commit, and
a refused or failed push hands the task back to the queue.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from claude_cluster import metrics
from claude_cluster.coordinator.agent_client import AgentClient
from claude_cluster.coordinator.store.repository import Claim, Repository
from claude_cluster.coordinator.store.tables import Task
from claude_cluster.domain.contract import OperatorPolicy
from claude_cluster.domain.wire import ExecuteTaskRequest
from claude_cluster.errors import AgentCallError
from claude_cluster.logging import get_logger

log = get_logger(__name__)

#: owner/name of a GitHub repository (anything else is a local path or URL)
GITHUB_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

#: tasks claimed per transaction at most
CLAIM_BATCH = 16

#: returns a short-lived token for one git step of a run on a repository (``purpose``:
#: ``fetch`` or ``deliver``), or None
TokenProvider = Callable[[str, str], Awaitable[str | None]]
#: the operator's contract for a repository (``owner/name`` or the task's path), or None
ContractProvider = Callable[[str], OperatorPolicy | None]


async def no_token(_repository: str, _purpose: str = "deliver") -> str | None:
    return None


def no_contract(_repository: str) -> OperatorPolicy | None:
    return None


class Dispatcher:
    def __init__(
        self,
        repo: Repository,
        client: AgentClient,
        *,
        max_concurrent_tasks: int,
        sweep_interval: float,
        task_timeout: float,
        cooldown_seconds: float,
        token_provider: TokenProvider = no_token,
        operator_contract: ContractProvider = no_contract,
        on_change: Callable[[str, Task], Awaitable[None]] | None = None,
    ) -> None:
        self._repo = repo
        self._on_change = on_change
        self._client = client
        self._max_active = max_concurrent_tasks
        self._sweep = sweep_interval
        self._task_timeout = task_timeout
        self._cooldown = cooldown_seconds
        self._tokens = token_provider
        self._contracts = operator_contract
        self._wake = asyncio.Event()
        #: a wake-up since the last pass came with a task known to be ready
        self._task_ready = False
        self._pushes: set[asyncio.Task[None]] = set()

    def wake(self, *, task_ready: bool = False) -> None:
        """Start a dispatch pass; ``task_ready``: the caller has just queued a task, so
        the pass claims at once instead of first asking whether any task is ready."""
        self._task_ready = self._task_ready or task_ready
        self._wake.set()

    def wake_later(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._sweep)
            except TimeoutError:
                pass
            self._wake.clear()
            probe, self._task_ready = not self._task_ready, False
            try:
                await self.dispatch_once(probe=probe)
            except Exception:  # keep dispatching whatever one pass hit
                log.exception("dispatch_pass_failed")
                await asyncio.sleep(min(1.0, self._sweep))
        await self.settle()

    async def settle(self) -> None:
        """Wait for the pushes under way (and their outcomes) to finish."""
        while self._pushes:
            await asyncio.gather(*self._pushes, return_exceptions=True)

    async def dispatch_once(
        self, *, only_task: int | None = None, only_agent: str | None = None, probe: bool = True
    ) -> int:
        """Claim and push until nothing more can be claimed; returns how many were claimed.
        ``probe``: let the first claim ask whether any task is ready before its transaction
        (the next ones follow a full batch, which says that more may be)."""
        total = 0
        while True:
            started = time.perf_counter()
            claims = await self._repo.claim(
                max_active=self._max_active,
                batch=CLAIM_BATCH,
                only_task=only_task,
                only_agent=only_agent,
                probe=probe,
            )
            probe = False
            metrics.CLAIM_DURATION.observe(time.perf_counter() - started)
            if not claims:
                return total
            total += len(claims)
            for claim in claims:
                push = asyncio.create_task(self._push(claim))
                self._pushes.add(push)
                push.add_done_callback(self._pushes.discard)
            # a short batch means no more tasks, agents or room right now: claiming again
            # at once would only cost a transaction (new work wakes the dispatcher anyway)
            if only_task is not None or len(claims) < CLAIM_BATCH:
                return total

    async def _changed(self, kind: str, task: Task) -> None:
        if self._on_change is not None:
            await self._on_change(kind, task)

    async def _push(self, claim: Claim) -> None:
        task, run, agent = claim.task, claim.run, claim.agent
        bound = log.bind(task_id=task.id, run_id=run.id, agent_id=agent.id)
        is_github = bool(GITHUB_REPO.match(task.github_repository))
        request = ExecuteTaskRequest(
            run_id=run.id,
            task_id=task.id,
            attempt=run.attempt,
            title=task.title,
            description=task.description,
            requirements=task.requirements,
            priority=task.priority,
            github_repository=task.github_repository,
            github_issue_number=task.github_issue_number,
            estimated_duration_minutes=task.estimated_duration_minutes,
            repository_url=task.repository_url,
            branch=task.github_branch if task.feedback else None,
            feedback=task.feedback,
            resume_session_id=task.session_id if task.feedback else None,
            budget_usd=task.budget_usd,
            test_command=task.test_command,
            # read at each dispatch, so a retry follows the operator's current caps
            operator_contract=self._contracts(task.github_repository),
            timeout_seconds=int(self._task_timeout),
            # no token: the agent asks for one when it fetches and when it delivers
            open_pull_request=is_github and self._tokens is not no_token,
        )
        try:
            await self._client.execute(agent, request)
        except AgentCallError as exc:
            bound.warning("dispatch_failed", reason=str(exc))
            await self._changed("assigned", task)
            requeued = await self._repo.dispatch_failed(
                run.id, str(exc), cooldown_seconds=self._cooldown
            )
            if requeued is not None:
                await self._changed("dispatch_failed", requeued)
            self.wake()
            return
        accepted = await self._repo.mark_accepted(run.id)
        await self._changed("assigned", task)
        if accepted is not None:
            await self._changed("accepted", accepted)
        if task.queued_at is not None:
            metrics.DISPATCH_LATENCY.observe(max(0.0, time.time() - task.queued_at.timestamp()))
        bound.info("dispatched", attempt=run.attempt)
