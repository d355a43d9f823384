"""What the cluster tells an issue: one progress comment per task, kept up to date.

:class:`IssueCommenter` is a coordinator observer: every committed change of a task of a
watched repository (created, claimed, accepted, a new step, a finished agent round or the
progress of the one running, reported by the agent, a run's end, a retry, cancel, merge)
asks for the task's progress comment to be brought up to date. The body is always
rendered from the database's current state
(:func:`~claude_cluster.github.progress.render_progress`), so an edit can never show an
older state than the one before it, whichever replica makes it.

- **Once**: the comment is created by the first change (claimed with a task event, so
  replicas and restarts create it at most once); its id is kept as a task event too.
- **Rate-limited**: edits of one comment are at least ``interval`` seconds apart
  (``GITHUB_PROGRESS_INTERVAL``, GitHub's secondary limits); changes in between collapse
  into the next edit, which shows the newest state. The final state is always written.
- **The coordinator writes it**, never the model: the result, the tests and the cost come
  from the run's report, the tests on the base commit from the run's ``baseline`` event
  (counts and a fixed vocabulary only: no text of the run reaches the comment that way),
  the turns and cost so far from its ``runner_finished`` and ``round_progress`` events
  (the dashboard's figure; numbers only, checked by the API and again when read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from claude_cluster import metrics
from claude_cluster.coordinator.service import Coordinator, TaskChange
from claude_cluster.coordinator.store.tables import Task, TaskRun
from claude_cluster.domain.states import TaskStatus
from claude_cluster.github import (
    Baseline,
    GitHubClient,
    GitHubError,
    Progress,
    RepositoryConfigs,
    TestResults,
    Usage,
    render_progress,
)
from claude_cluster.logging import get_logger

log = get_logger(__name__)

#: task events: the claim to create the comment, and the created comment's id
CLAIMED = "github_progress"
COMMENT_ID = "github_progress_comment"


async def count_pull_request(coordinator: Coordinator, task_id: int, number: int) -> None:
    """Count a pull request in ``claude_github_prs_created_total`` once, whichever of the
    webhook and the run's result reports it first."""
    if await coordinator.repo.mark_once(task_id, f"github_pr:{number}", f"PR #{number} counted"):
        metrics.GITHUB_PRS_CREATED.inc()


def tests_of(run: TaskRun) -> TestResults | None:
    if not run.tests_command:
        return None
    return TestResults(
        command=run.tests_command, passed=run.tests_passed or 0, failed=run.tests_failed or 0
    )


def baseline_of(data: Mapping[str, Any] | None) -> Baseline | None:
    """The tests on the base commit from the run's ``baseline`` event, or None before it.

    Only counts (non-negative integers) and the ``skipped``/``untested`` statuses are
    taken; anything else the event carries is not shown."""
    if data is None:
        return None
    if data.get("ran") is False:
        return Baseline(missing="skipped" if data.get("status") == "skipped" else "untested")
    counts = {key: data.get(key) for key in ("passed", "failed", "errors")}
    if data.get("ok") is None or not all(_count(value) for value in counts.values()):
        return Baseline(missing="untested")  # the tests did not run on the base commit
    return Baseline(passed=data["passed"], failed=data["failed"], errors=data["errors"])


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < 10**9


def usage_of(run: TaskRun) -> Usage:
    return Usage(
        cost_usd=run.cost_usd,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cache_read_tokens=run.cache_read_tokens,
        cache_creation_tokens=run.cache_creation_tokens,
        num_turns=run.num_turns,
    )


class IssueCommenter:
    """Keeps each task's progress comment on its issue up to date."""

    def __init__(
        self,
        coordinator: Coordinator,
        github: GitHubClient,
        repositories: RepositoryConfigs,
        *,
        interval: float = 10.0,
    ) -> None:
        self.coordinator = coordinator
        self.github = github
        self.repositories = repositories
        self.interval = interval
        self._pending: set[int] = set()
        self._writers: dict[int, asyncio.Task[None]] = {}
        self._last_edit: dict[int, float] = {}
        self._bodies: dict[int, str] = {}

    def watched(self, task: Task) -> str | None:
        cfg = self.repositories.get(task.github_repository)
        return cfg.full_name if cfg else None

    async def __call__(self, change: TaskChange) -> None:
        """The observer: bring the comment up to date, and count pull requests and start
        deferred feedback when a run ends."""
        if self.watched(change.task) is None:
            return
        self.refresh(change.task.id)
        end = change.run_end
        if change.kind == "run_succeeded" and end is not None:
            if end.run.pr_number:
                await count_pull_request(self.coordinator, change.task.id, end.run.pr_number)
            if change.task.status == TaskStatus.REVIEW.value:
                # feedback that arrived during this run gets its follow-up now
                await self.coordinator.queue_deferred_feedback(change.task.id)

    def refresh(self, task_id: int) -> None:
        """Ask for an edit; it happens now or when the interval allows, with the newest state."""
        self._pending.add(task_id)
        writer = self._writers.get(task_id)
        if writer is None or writer.done():
            self._writers[task_id] = asyncio.create_task(self._write(task_id))

    async def settle(self) -> None:
        """Wait for the edits asked for so far (tests, shutdown)."""
        while writers := [w for w in self._writers.values() if not w.done()]:
            await asyncio.gather(*writers, return_exceptions=True)

    async def _write(self, task_id: int) -> None:
        while task_id in self._pending:
            wait = self._last_edit.get(task_id, 0.0) + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._pending.discard(task_id)
            try:
                await self._update(task_id)
            except GitHubError as exc:
                # a lost edit must not undo the change it reports; the next change retries
                log.warning("github_progress_failed", task_id=task_id, error=str(exc))
            except Exception:
                log.exception("github_progress_failed", task_id=task_id)
            self._last_edit[task_id] = time.monotonic()

    async def _update(self, task_id: int) -> None:
        repo = self.coordinator.repo
        task = await repo.get_task(task_id)
        body = render_progress(await self._progress(task))
        if self._bodies.get(task_id) == body:
            return
        full_name = self.watched(task)
        if full_name is None:
            return
        comment_id = await repo.latest_event_message(task_id, COMMENT_ID)
        if comment_id is None:
            if not await repo.mark_once(task_id, CLAIMED, "progress comment claimed"):
                return  # another replica is creating it; it renders the newest state
            comment = await self.github.comment(full_name, task.github_issue_number, body)
            await repo.add_task_event(task_id, COMMENT_ID, str(comment.id))
            self._bodies[task_id] = body
            # a change may have landed while the comment was being created
            self._pending.add(task_id)
            return
        await self.github.edit_comment(full_name, int(comment_id), body)
        self._bodies[task_id] = body

    async def _progress(self, task: Task) -> Progress:
        runs = await self.coordinator.repo.list_runs(task.id)
        run = max(runs, key=lambda r: r.attempt) if runs else None
        ended = run is not None and run.ended_at is not None
        repo = self.coordinator.repo
        phase = await repo.run_phase(run.id) if run is not None else None
        retrying = ended and task.status == TaskStatus.QUEUED.value and run is not None
        baseline = None
        if run is not None and not retrying:
            baseline = baseline_of(await repo.run_event_details(run.id, "baseline"))
        so_far, estimated = None, False
        if run is not None and not ended:
            # the dashboard's figure: the run's finished agent rounds and the one running
            reported = (await repo.reported_so_far([run.id])).get(run.id)
            if reported is not None:
                so_far = Usage(cost_usd=reported.cost_usd, num_turns=reported.turns)
                estimated = reported.estimated
        reason = None
        if task.status == TaskStatus.FAILED.value:
            reason = task.error_message or (run.message if run else None) or "the run failed"
        elif retrying and run is not None:
            reason = f"{run.error_category or 'error'}: {run.message or 'no message'}"
        return Progress(
            task_id=task.id,
            status=task.status,
            phase=None if retrying else phase,
            attempt=run.attempt if run else 0,
            agent=run.agent_id if run else None,
            usage=usage_of(run) if ended and run is not None else None,
            so_far=so_far,
            so_far_estimated=estimated,
            tests=tests_of(run) if ended and run is not None else None,
            baseline=baseline,
            pr_url=(run.pr_url if run else None) or None,
            branch=run.branch if run else None,
            reason=reason,
            retrying=bool(retrying),
        )
