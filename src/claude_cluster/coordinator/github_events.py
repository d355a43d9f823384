"""What the coordinator does for each GitHub event: the decisions of the GitHub loop.

:class:`EventHandler` turns one verified, typed event (a webhook delivery, or an issue the
poller found) into coordinator calls and GitHub writes, and returns an :class:`Outcome`
that the webhook route stores on the delivery. Issue text only ever travels as data (task
title, description, feedback): nothing here builds a command line.

Only trusted actors steer runs (:mod:`~claude_cluster.coordinator.github_trust`): an event
that would start, change, stop or give feedback to a task counts only when its actor is
trusted; otherwise it is ignored, counted and logged once, and never answered on GitHub.

A pull request belongs to a task only when its head repository is the task's repository,
its head branch is the task's branch, and its number is the one the task's run recorded.
Nothing in a pull request's text (``Task ID:``, ``Closes #n``) ever names its task, and a
pull request from a fork never touches a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from claude_cluster.coordinator.github_comments import count_pull_request
from claude_cluster.coordinator.github_trust import ActorTrust
from claude_cluster.coordinator.service import Coordinator, TaskRequest
from claude_cluster.coordinator.store.tables import Task
from claude_cluster.domain.states import TERMINAL_TASK_STATUSES, TaskStatus
from claude_cluster.errors import Conflict
from claude_cluster.github import (
    ASSIGNED_LABEL,
    GitHubClient,
    Issue,
    IssueCommentEvent,
    IssuesEvent,
    PullRequest,
    PullRequestEvent,
    PullRequestReviewEvent,
    RepositoryConfig,
    RepositoryConfigs,
    has_trigger_label,
    mentions,
    render_completed_comment,
    should_trigger,
)
from claude_cluster.github.trust import Verdict, is_listed
from claude_cluster.logging import get_logger

log = get_logger(__name__)

#: who a comment must mention to send feedback to the agent
MENTION = "@claude"


@dataclass(frozen=True)
class Outcome:
    """How an event was handled: stored on its ``webhook_deliveries`` row."""

    status: str  #: processed, ignored or error
    reason: str
    task_id: int | None = None


def ignored(reason: str, task_id: int | None = None) -> Outcome:
    return Outcome("ignored", reason, task_id)


def processed(reason: str, task_id: int | None = None) -> Outcome:
    return Outcome("processed", reason, task_id)


def start_of_day(now: datetime | None = None) -> datetime:
    """Midnight UTC of today: daily budgets reset then."""
    now = now or datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


class EventHandler:
    """Handles events for the watched repositories.

    Args:
        coordinator: the coordinator service.
        github: the client the coordinator writes to GitHub with.
        repositories: the watched repositories.
    """

    def __init__(
        self, coordinator: Coordinator, github: GitHubClient, repositories: RepositoryConfigs
    ) -> None:
        self.coordinator = coordinator
        self.github = github
        self.repositories = repositories
        self.trust = ActorTrust(github)

    # --- issues -----------------------------------------------------------------------

    async def on_issues(self, cfg: RepositoryConfig, event: IssuesEvent) -> Outcome:
        issue, action = event.issue, event.action
        if action in ("opened", "reopened", "labeled"):
            label = event.label.name if event.label else None
            decision = should_trigger(cfg, issue.label_names, action, label)
            if not decision.trigger:
                return ignored(decision.reason)
            verdict = await self._issue_actor(cfg, event)
            if not verdict.trusted:
                return self._untrusted(cfg, event, verdict)
            return await self.start_task(cfg, issue, source=f"webhook:{action}")
        task = await self.coordinator.repo.open_task_for_issue(cfg.full_name, issue.number)
        if task is None:
            return ignored(f"no open task for issue #{issue.number}")
        verdict = await self._issue_actor(cfg, event)
        if not verdict.trusted:
            if action == "edited":
                # the run keeps the text a trusted actor started it with; the log says so
                await self.coordinator.note(
                    task.id,
                    "github_edit_ignored",
                    f"issue #{issue.number} was edited by an untrusted actor "
                    f"({verdict.reason}); the task keeps the text it was started with",
                )
            return self._untrusted(cfg, event, verdict, task.id)
        if action == "edited":
            if task.status != TaskStatus.QUEUED.value:
                return ignored(f"task {task.id} is {task.status}; only a queued task follows edits")
            changes = {"title": issue.title, "description": issue.body or ""}
            await self.coordinator.update_task(task.id, changes)
            return processed("queued task updated from the edited issue", task.id)
        if action == "closed":
            await self.coordinator.cancel_task(task.id, "the issue was closed on GitHub")
            return processed("issue closed: task cancelled", task.id)
        # unlabeled
        if has_trigger_label(cfg, issue.label_names):
            return ignored("a trigger label remains", task.id)
        if task.status != TaskStatus.QUEUED.value:
            return ignored(f"task {task.id} is {task.status}; only a queued task is cancelled")
        await self.coordinator.cancel_task(task.id, "the last trigger label was removed")
        return processed("last trigger label removed: queued task cancelled", task.id)

    async def _issue_actor(self, cfg: RepositoryConfig, event: IssuesEvent) -> Verdict:
        """The actor of an issue event: the author of an opened issue, or of an edit to
        their own issue, by ``author_association``; anyone else by their permission."""
        issue, sender = event.issue, event.sender
        by_author = event.action == "opened" or (
            event.action == "edited"
            and sender is not None
            and issue.user is not None
            and sender.login.lower() == issue.user.login.lower()
        )
        if by_author:
            return self.trust.by_association(cfg, issue.user, issue.author_association)
        return await self.trust.by_permission(cfg, sender)

    def _untrusted(
        self,
        cfg: RepositoryConfig,
        event: IssuesEvent | IssueCommentEvent | PullRequestReviewEvent,
        verdict: Verdict,
        task_id: int | None = None,
    ) -> Outcome:
        actor = event.sender.login if event.sender else "?"
        self.trust.ignored(cfg, f"{event.event}.{event.action}", "untrusted", actor)
        return ignored(verdict.reason, task_id)

    async def start_task(self, cfg: RepositoryConfig, issue: Issue, *, source: str) -> Outcome:
        """Queue the issue's task (deduplicated per issue), label the issue, or refuse it
        over the repository's daily budget."""
        if issue.is_pull_request:
            return ignored("pull requests do not start tasks")
        if issue.state != "open":
            return ignored(f"issue #{issue.number} is {issue.state}")
        existing = await self.coordinator.repo.open_task_for_issue(cfg.full_name, issue.number)
        if existing is not None:
            return ignored(f"task {existing.id} is already open for this issue", existing.id)
        refusal = await self._over_budget(cfg, issue)
        if refusal is not None:
            return refusal
        task, created = await self.coordinator.submit_task(
            TaskRequest(
                title=issue.title,
                description=issue.body or "",
                github_repository=cfg.full_name,
                github_issue_number=issue.number,
                labels=issue.label_names,
                test_command=cfg.test_command,
                created_by=f"github:{source}",
            )
        )
        if not created:
            return ignored(f"task {task.id} is already open for this issue", task.id)
        if ASSIGNED_LABEL not in issue.label_names:
            await self.github.add_labels(cfg.full_name, issue.number, [ASSIGNED_LABEL])
        return processed(f"task {task.id} created", task.id)

    async def _over_budget(self, cfg: RepositoryConfig, issue: Issue) -> Outcome | None:
        if cfg.daily_budget_usd is None:
            return None
        today = start_of_day()
        spent = await self.coordinator.repo.repository_cost_since(cfg.full_name, today)
        if spent < cfg.daily_budget_usd:
            return None
        reason = (
            f"the daily budget of {cfg.full_name} is spent "
            f"(${spent:.2f} of ${cfg.daily_budget_usd:.2f} since 00:00 UTC)"
        )
        # one refusal comment per issue a day, whichever replica or restart sees it first
        key = f"budget_refused:{cfg.full_name.lower()}#{issue.number}:{today.date().isoformat()}"
        if await self.coordinator.repo.mark_once_cluster(key):
            await self.github.comment(
                cfg.full_name,
                issue.number,
                f"⏸️ Claude Code Cluster did not start: {reason}. "
                "Label the issue again after midnight UTC.",
            )
        return ignored(reason)

    # --- pull requests ----------------------------------------------------------------

    async def on_pull_request(self, cfg: RepositoryConfig, event: PullRequestEvent) -> Outcome:
        pr = event.pull_request
        task, why = await self.task_of(cfg, pr)
        if task is None and event.action == "closed":  # would have ended a task
            return self._foreign(cfg, event.event, event.action, why)
        if task is None:  # e.g. opened before its run reported: the result records it
            return ignored(why)
        if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
            return ignored(f"task {task.id} is already {task.status}", task.id)
        if event.action in ("opened", "reopened"):
            if await self.coordinator.attach_pull_request(task.id, pr.number, pr.html_url):
                await count_pull_request(self.coordinator, task.id, pr.number)
            return processed(f"pull request #{pr.number} recorded", task.id)
        if event.action != "closed":
            return ignored(f"pull_request.{event.action} needs nothing", task.id)
        if pr.merged:
            await self.coordinator.set_task_status(
                task.id,
                TaskStatus.COMPLETED,
                f"pull request #{pr.number} was merged",
                github_pr_number=pr.number,
                github_pr_url=pr.html_url,
            )
            issue = task.github_issue_number
            await self.github.comment(
                cfg.full_name, issue, render_completed_comment(task.id, pr_number=pr.number)
            )
            await self.github.close_issue(cfg.full_name, issue)
            return processed(f"merged: task completed, issue #{issue} closed", task.id)
        await self.coordinator.set_task_status(
            task.id, TaskStatus.FAILED, f"pull request #{pr.number} was closed without merging"
        )
        return processed("closed unmerged: task failed", task.id)

    async def task_of(self, cfg: RepositoryConfig, pr: PullRequest) -> tuple[Task | None, str]:
        """The task a pull request belongs to, or None and why not.

        All three must hold: the head repository is the watched repository (never a fork),
        the number is the one the task's run recorded, and the head branch is the task's.
        """
        head_repo = pr.head.repo.full_name if pr.head.repo else None
        if head_repo is None or head_repo.lower() != cfg.full_name.lower():
            source = head_repo or "a deleted repository"
            return None, f"pull request #{pr.number} comes from {source}, not {cfg.full_name}"
        task = await self.coordinator.repo.task_for_pull_request(cfg.full_name, pr.number)
        if task is None:
            return None, f"pull request #{pr.number} is not one a task's run recorded"
        if task.github_branch != pr.head.ref:
            return None, (
                f"pull request #{pr.number} is from branch {pr.head.ref!r}, not task "
                f"{task.id}'s branch {task.github_branch!r}"
            )
        return task, ""

    def _foreign(self, cfg: RepositoryConfig, event: str, action: str | None, why: str) -> Outcome:
        """A pull request that is not a task's: counted, and logged once per kind."""
        self.trust.ignored(cfg, f"{event}.{action}", "not_the_tasks_pull_request", why)
        return ignored(why)

    # --- feedback ---------------------------------------------------------------------

    async def on_review(self, cfg: RepositoryConfig, event: PullRequestReviewEvent) -> Outcome:
        review = event.review
        if not (event.changes_requested or mentions(review.body, MENTION)):
            return ignored(f"review {review.state} asks for nothing")
        task, why = await self.task_of(cfg, event.pull_request)
        if task is None:
            return self._foreign(cfg, event.event, event.action, why)
        verdict = self.trust.by_association(cfg, review.user, review.author_association)
        if not verdict.trusted:
            return self._untrusted(cfg, event, verdict, task.id)
        who = review.user.login if review.user else "a reviewer"
        text = review.body or "Changes were requested without a comment."
        feedback = f"Review by @{who} on pull request #{event.pull_request.number}:\n\n{text}"
        return await self._feedback(
            cfg, task, event.pull_request.number, feedback, event.delivery_id
        )

    async def on_comment(self, cfg: RepositoryConfig, event: IssueCommentEvent) -> Outcome:
        comment = event.comment
        if not event.on_pull_request:
            return ignored("a comment on an issue, not on a pull request")
        if not mentions(comment.body, MENTION):
            return ignored(f"the comment does not mention {MENTION}")
        verdict = self.trust.by_association(cfg, comment.user, comment.author_association)
        user = comment.user
        listed = user is not None and is_listed(user.login, cfg.trusted_logins)
        if user is not None and user.type == "Bot" and not listed:
            return ignored("comments by bots are not feedback")  # never answer ourselves
        number = event.issue.number
        # the number the run recorded is the task's own pull request (never a fork's)
        task = await self.coordinator.repo.task_for_pull_request(cfg.full_name, number)
        if task is None:
            return self._foreign(
                cfg,
                event.event,
                event.action,
                f"pull request #{number} is not one a task's run recorded",
            )
        if not verdict.trusted:
            return self._untrusted(cfg, event, verdict, task.id)
        who = comment.user.login if comment.user else "someone"
        feedback = f"Comment by @{who} on pull request #{number}:\n\n{comment.body}"
        return await self._feedback(cfg, task, number, feedback, event.delivery_id)

    async def _feedback(
        self, cfg: RepositoryConfig, task: Task, pr_number: int, feedback: str, delivery: str
    ) -> Outcome:
        if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
            return ignored(f"task {task.id} is {task.status}; feedback is not taken", task.id)
        # a delivery resumed after its process died mid-work must not queue it (and answer)
        # twice: the first attempt claims it, and gives the claim back if queueing failed
        repo, mark = self.coordinator.repo, f"feedback:{delivery}"
        if not await repo.mark_once_cluster(mark):
            return ignored("this delivery's feedback was taken before", task.id)
        try:
            task, outcome = await self.coordinator.queue_feedback(task.id, feedback)
        except Conflict as exc:  # the task ended between the lookup and the update
            return ignored(str(exc), task.id)
        except BaseException:
            await repo.forget_once_cluster(mark)
            raise
        if outcome == "deferred":
            note = "A run is still active; this feedback starts a follow-up run when it ends."
        elif outcome == "merged":
            note = "This feedback joins the follow-up run that is already queued."
        else:
            note = "A follow-up run on this branch is queued with this feedback."
        await self.github.comment(cfg.full_name, pr_number, f"🤖 {note}\n\nTask ID: {task.id}")
        return processed(f"feedback {outcome}", task.id)
