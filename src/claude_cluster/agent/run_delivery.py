"""The end of a run: what it delivers, and the delivering.

:meth:`Deliverer.deliver` decides by the repository's contract what a tested, a failing
and an untested run delivers (a pull request, a draft, a branch, or nothing), and
:meth:`Deliverer.checkpoint` pushes the paid work of a run stopped by its turns or budget.
Every push is fenced first (:mod:`~claude_cluster.agent.delivery_fence`) and made inside
the run's box when it is confined (:mod:`~claude_cluster.agent.deliver`); the pull
request is opened with the run's figures (:mod:`~claude_cluster.agent.pull_request`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from claude_cluster.agent.coordinator_client import CoordinatorError
from claude_cluster.agent.deliver import (
    Delivery,
    ProtectedPathError,
    commit_and_push,
    deliver_run_repository,
)
from claude_cluster.agent.delivery_fence import DeliveryConfirmer, confirm
from claude_cluster.agent.git import DeliveryError, WorkspaceError, git
from claude_cluster.agent.pull_request import PullRequestOpener, describe
from claude_cluster.agent.run_context import GitTokenSource, RunContext, git_token
from claude_cluster.agent.run_report import RunEnded, run_figures, tests_failed_message
from claude_cluster.agent.runbox import RunBox
from claude_cluster.agent.workspace import Workspace, WorkspaceManager
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import RunResult

__all__ = ["Deliverer", "has_changes"]


class Deliverer:
    """Delivers runs; one instance serves every run of the agent.

    Args:
        workspaces: for the mirror's lock while a confined run pushes.
        open_pull_request: opens or updates the pull request.
        git_tokens: the coordinator's deliver tokens when there is no confirmer.
        confirm_delivery: the fencing check (``None``: no coordinator, no check).
    """

    def __init__(
        self,
        *,
        workspaces: WorkspaceManager,
        open_pull_request: PullRequestOpener,
        git_tokens: GitTokenSource | None,
        confirm_delivery: DeliveryConfirmer | None,
    ) -> None:
        self.workspaces = workspaces
        self.open_pull_request = open_pull_request
        self.git_tokens = git_tokens
        self.confirm_delivery = confirm_delivery

    async def deliver(self, ctx: RunContext) -> RunResult:
        """Deliver as the contract says for tested, failing and untested runs."""
        request, reporter, ws, progress, policy = (
            ctx.request, ctx.reporter, ctx.ws, ctx.progress, ctx.policy
        )  # fmt: skip
        failing = progress.verdict is not None and progress.verdict.failing
        tests = progress.tests
        what = policy.when_untested if progress.untested else "push"
        if failing:
            what = policy.when_tests_fail
        if progress.untested:
            reporter.event(
                "untested",
                f"untested: {progress.untested} (when_untested: {policy.when_untested})",
                {"reason": progress.untested, "policy": policy.when_untested},
                level="warning",
            )
        if what == "fail":
            category = ErrorCategory.TESTS_FAILED if failing else ErrorCategory.UNTESTED
            why = tests_failed_message(progress) if failing else f"untested: {progress.untested}"
            return progress.result(
                succeeded=False,
                category=category,
                message=f"{why}; nothing was delivered (the repository's contract says fail)",
            )
        pushed = await self._push(ctx)
        if isinstance(pushed, RunResult):
            return pushed
        draft = what == "draft"
        if request.open_pull_request and pushed and (draft or not failing):
            loop = asyncio.get_running_loop()
            if progress.deliver_by is not None and loop.time() >= progress.deliver_by:
                # the push took the whole window: the pull request needs a fresh check
                again = await confirm(ctx, self.confirm_delivery)
                if isinstance(again, RunResult):
                    return again
            try:
                async with asyncio.timeout_at(progress.deliver_by):
                    failure = await self._pull_request(ctx, pushed, draft=draft)
            except TimeoutError:
                failure = progress.result(
                    succeeded=False,
                    category=ErrorCategory.DELIVERY_ERROR,
                    message=f"the branch {ws.branch} was pushed but the pull request did not "
                    "open within the delivery window the coordinator confirmed",
                )
            if failure is not None:
                return failure
        where = f"pull request {progress.pr_url}" if progress.pr_url else f"branch {ws.branch}"
        if draft and progress.pr_url:
            where = f"draft {where}"
        if failing:
            return progress.result(
                succeeded=False,
                category=ErrorCategory.TESTS_FAILED,
                message=f"{tests_failed_message(progress)}; {where} was pushed for inspection",
            )
        if progress.untested:
            tests_line = f"untested: {progress.untested}"
        else:
            tests_line = tests.summary if tests is not None else "no tests ran"
        return progress.result(
            succeeded=True, message=f"delivered {where} ({tests_line})\n\n{progress.summary}"
        )

    async def checkpoint(self, ctx: RunContext, stopped: RunEnded) -> RunResult:
        """A run stopped by its turns or budget keeps its paid work: push it as a branch."""
        result = stopped.result
        checkpoint = (ErrorCategory.MAX_TURNS, ErrorCategory.BUDGET_EXCEEDED)
        if result.error_category not in checkpoint or not await has_changes(ctx.ws, ctx.box):
            return result
        pushed = await self._push(ctx)
        if isinstance(pushed, RunResult):
            return result  # the push failed; the stop is still the reason
        branch = ctx.ws.branch
        ctx.reporter.event("checkpoint", f"work so far pushed to {branch}", {"branch": branch})
        return ctx.progress.result(
            succeeded=False,
            category=result.error_category,
            message=f"{result.message}; the work so far was pushed to branch {branch} "
            "as a checkpoint",
        )

    async def _push(self, ctx: RunContext) -> RunResult | str | None:
        """Commit and push the run's work; a failure's result, or the token for the PR.

        First the fencing check: no confirmation from the coordinator that the run still
        holds its task, no push (:func:`~claude_cluster.agent.delivery_fence.confirm`)."""
        request, reporter, progress = ctx.request, ctx.reporter, ctx.progress
        reporter.event("phase", "committing and pushing", {"phase": "deliver"})
        title = " ".join(request.title.split())
        summary = f"Resolve issue #{request.github_issue_number}: {title}"[:120]
        tokens: list[str | None] = []
        confirmed = await confirm(ctx, self.confirm_delivery)
        if isinstance(confirmed, RunResult):
            return confirmed

        async def token() -> str | None:
            if confirmed is None:
                tokens.append(await git_token(self.git_tokens, request, "deliver"))
            else:
                tokens.append(confirmed.token)
            return tokens[-1]

        protected = tuple(dict.fromkeys([*ctx.config.protected_paths, *ctx.policy.protected_paths]))
        try:
            # no confirmation (no coordinator to ask): deliver_by is None, no deadline
            async with asyncio.timeout_at(progress.deliver_by):
                delivery = await self._commit_and_push(ctx, summary, token, protected)
        except ProtectedPathError as exc:
            reporter.event("delivery_refused", str(exc), {}, level="error")
            return progress.result(
                succeeded=False, category=ErrorCategory.EXECUTION_ERROR, message=str(exc)
            )
        except (DeliveryError, CoordinatorError) as exc:
            return progress.result(
                succeeded=False, category=ErrorCategory.DELIVERY_ERROR, message=str(exc)
            )
        except TimeoutError:
            return progress.result(
                succeeded=False,
                category=ErrorCategory.DELIVERY_ERROR,
                message="the push did not end within the delivery window the coordinator "
                "confirmed; it was stopped",
            )
        if delivery.no_changes:
            return progress.result(
                succeeded=False,
                category=ErrorCategory.NO_CHANGES,
                message="the agent finished without changing anything",
            )
        progress.commit_sha = delivery.commit_sha
        progress.changed_files = list(delivery.changed_files)
        reporter.event(
            "delivered",
            f"pushed {delivery.branch} at {(delivery.commit_sha or '')[:12]}",
            {
                "branch": delivery.branch,
                "commit_sha": delivery.commit_sha,
                "changed_files": list(delivery.changed_files)[:200],
            },
        )
        return tokens[-1] if tokens else None

    async def _commit_and_push(
        self,
        ctx: RunContext,
        summary: str,
        token: Callable[[], Awaitable[str | None]],
        protected: tuple[str, ...],
    ) -> Delivery:
        """Commit and push, inside the run's box when it is confined."""
        request, ws, box, config = ctx.request, ctx.ws, ctx.box, ctx.config
        if box.confined:
            return await deliver_run_repository(
                ws,
                box,
                run_id=request.run_id,
                task_id=request.task_id,
                summary=summary,
                author_name=config.git_user_name,
                author_email=config.git_user_email,
                remote_url=request.repository_url,
                git_token=token,
                mirror_lock=lambda: self.workspaces.mirrors.locked(ws.mirror),
                protected=protected,
                timeout=config.git_timeout,
            )
        return await commit_and_push(
            ws,
            task_id=request.task_id,
            summary=summary,
            author_name=config.git_user_name,
            author_email=config.git_user_email,
            remote_url=request.repository_url,
            git_token=await token(),
            timeout=config.git_timeout,
        )

    async def _pull_request(
        self, ctx: RunContext, token: str, *, draft: bool = False
    ) -> RunResult | None:
        from claude_cluster.github import GitHubError  # only runs opening a PR load GitHub

        ws, progress, config = ctx.ws, ctx.progress, ctx.config
        pr = describe(
            ctx.request,
            head=ws.branch,
            base=ws.base_branch,
            figures=run_figures(ctx),
            agent_id=config.agent_id,
            model=config.model,
            token=token,
            confined=ctx.box.confined,
            draft=draft,
        )
        try:
            number, url = await self.open_pull_request(pr)
        except GitHubError as exc:
            return progress.result(
                succeeded=False,
                category=ErrorCategory.DELIVERY_ERROR,
                message=f"the branch {ws.branch} was pushed but the pull request failed: {exc}",
            )
        progress.pr_number, progress.pr_url = number, url
        ctx.reporter.event(
            "pull_request", f"pull request #{number}: {url}", {"number": number, "url": url}
        )
        return None


async def has_changes(ws: Workspace, box: RunBox) -> bool:
    """Whether the worktree differs from where the run started (files or commits)."""
    if box.confined:
        # the run's repository is the run's: its git config may hold any command, so git
        # reads it only inside the box
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LC_ALL": "C"}  # noqa: S108
        code, out = await box.run(
            ["sh", "-c", "git status --porcelain --untracked-files=all; git rev-parse HEAD"],
            cwd=ws.path,
            env=env,
            timeout=120,
        )
        if code != 0:
            return True  # let the delivery step find out and say what is wrong
        lines = out.splitlines() or [""]
        return len(lines) > 1 or lines[-1].strip() != ws.start_sha
    try:
        status = await git("status", "--porcelain", "--untracked-files=all", cwd=ws.path)
        head = await git("rev-parse", "HEAD", cwd=ws.path)
    except WorkspaceError:
        return True  # let the delivery step find out and say what is wrong
    return bool(status.stdout.strip()) or head.stdout.strip() != ws.start_sha
