"""What the cluster tells an issue: work started, a pull request with its real test results
and cost, or why it failed.

:class:`IssueCommenter` is a coordinator observer (it hears every committed
:class:`~claude_cluster.coordinator.service.TaskChange`) plus a small sweep for the start
comment: the dispatcher reports no change when an agent accepts a run, so the sweep looks
for tasks of watched repositories that are running and have not been announced. Each
announcement is claimed with a ``github_started`` task event before it is posted, so
several replicas and restarts post it at most once.
"""

from __future__ import annotations

import asyncio

from claude_cluster import metrics
from claude_cluster.coordinator.service import Coordinator, TaskChange
from claude_cluster.coordinator.store.tables import Task, TaskRun
from claude_cluster.domain.states import TaskStatus
from claude_cluster.github import (
    GitHubClient,
    GitHubError,
    RepositoryConfigs,
    TestResults,
    Usage,
    render_failure_comment,
    render_start_comment,
    render_success_comment,
)
from claude_cluster.logging import get_logger

log = get_logger(__name__)

STARTED = "github_started"
#: statuses in which the agent has accepted the run
_WORKING = (TaskStatus.IN_PROGRESS, TaskStatus.TESTING)


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


def usage_of(run: TaskRun) -> Usage:
    return Usage(
        cost_usd=run.cost_usd,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cache_read_tokens=run.cache_read_tokens,
        cache_creation_tokens=run.cache_creation_tokens,
    )


class IssueCommenter:
    """Comments on the issues of watched repositories as their tasks move."""

    def __init__(
        self, coordinator: Coordinator, github: GitHubClient, repositories: RepositoryConfigs
    ) -> None:
        self.coordinator = coordinator
        self.github = github
        self.repositories = repositories

    def watched(self, task: Task) -> str | None:
        cfg = self.repositories.get(task.github_repository)
        return cfg.full_name if cfg else None

    async def __call__(self, change: TaskChange) -> None:
        """The observer: the start comment when an agent accepts a run, a comment when a
        run ends, and the deferred feedback's turn."""
        repo = self.watched(change.task)
        if repo is not None and change.kind == "accepted":
            await self.announce_started()
            return
        if repo is None or change.run_end is None:
            return
        task, run = change.task, change.run_end.run
        if change.kind == "run_succeeded":
            if run.pr_number:
                await count_pull_request(self.coordinator, task.id, run.pr_number)
            if run.pr_url:
                body = render_success_comment(
                    task.id, pr_url=run.pr_url, tests=tests_of(run), usage=usage_of(run)
                )
            else:
                body = (
                    f"✅ Claude Code Cluster pushed branch `{run.branch}`.\n\n"
                    f"**Cost:** {usage_of(run).line()}\n\nTask ID: {task.id}"
                )
            await self._comment(repo, task.github_issue_number, body)
            if task.status == TaskStatus.REVIEW.value:
                # feedback that arrived during this run gets its follow-up now
                await self.coordinator.queue_deferred_feedback(task.id)
        elif change.kind == "run_failed" and task.status == TaskStatus.FAILED.value:
            reason = task.error_message or run.message or "the run failed"
            body = render_failure_comment(task.id, reason=reason, branch=run.branch)
            await self._comment(repo, task.github_issue_number, body)

    async def announce_started(self) -> int:
        """Post the start comment of every newly running task; returns how many."""
        tasks = await self.coordinator.repo.tasks_without_event(
            _WORKING, STARTED, repositories=list(self.repositories)
        )
        posted = 0
        for task in tasks:
            if not await self.coordinator.repo.mark_once(task.id, STARTED, "start announced"):
                continue  # another replica took it
            body = render_start_comment(
                task.id, agent=task.assigned_agent_id, attempt=max(1, task.attempts)
            )
            await self._comment(task.github_repository, task.github_issue_number, body)
            posted += 1
        return posted

    async def run_announcer(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                await self.announce_started()
            except Exception:  # a database hiccup must not end the sweep
                log.exception("github_announce_failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                continue

    async def _comment(self, repo: str, number: int, body: str) -> None:
        try:
            await self.github.comment(repo, number, body)
        except GitHubError as exc:
            # a lost comment must not undo the task change it reports
            log.warning("github_comment_failed", repository=repo, issue=number, error=str(exc))
