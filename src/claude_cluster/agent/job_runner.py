"""One run, start to finish: workspace → prompt → runner → tests → fix rounds → delivery.

:class:`JobRunner` turns an :class:`~claude_cluster.domain.wire.ExecuteTaskRequest` into a
:class:`~claude_cluster.domain.wire.RunResult` with the real figures: the test counts as
measured, the cost, tokens and turns the runner reported (summed over the fix rounds),
the session id, the branch, the commit and the pull request. It never raises for a failed
run; the failure is the result's ``error_category``:

==================  ===========================================================
category            when
==================  ===========================================================
workspace_error     fetching the repository or making the worktree failed
contract_error      the repository's ``.claude-cluster.yml`` is invalid, or names
                    a runner this agent does not have (before any model call;
                    the message names the key and the line, or the runner)
(runner outcome)    the runner failed: max_turns, rate_limited, stall, crash, …
                    (max_turns and budget_exceeded push the work as a checkpoint)
no_changes          the runner finished without changing anything
tests_failed        the run's own tests still fail after ``max_fix_rounds`` fix
                    rounds (``when_tests_fail`` decides what is delivered)
untested            the tests could not run and ``when_untested`` is ``fail``
delivery_error      commit, push or pull request failed
cancelled           the run was stopped (the pool may re-label why)
==================  ===========================================================

Before the agent: the repository's contract is read from the base commit
(:mod:`~claude_cluster.agent.run_policy`), the run's box is opened and the test
environment set up in it (:mod:`~claude_cluster.agent.run_environment`), and the tests run
once on the base commit (the baseline), so that the result says what the run fixed and
what it broke, and failures that were there before are not the run's
(:mod:`~claude_cluster.domain.baseline`). A run whose tests did not run is *untested*:
never reported as tested, and ``when_untested`` decides whether it delivers a pull
request, a draft, or nothing.

A follow-up run (review feedback) continues ``request.branch`` and, when this agent still
has the session's transcript, resumes ``request.resume_session_id``. The CLI keeps its
state in a HOME per task under ``<WORKSPACE_PATH>/homes``, which is what makes resuming
possible.

The phases live in their own modules; this one orders them and turns what ends a run
(a failed phase, a full disk, a cancellation) into its result:

====================  ============================================================
module                owns
====================  ============================================================
``run_policy``        the contract and the run's policy (``resolve_policy``)
``run_environment``   the box (sandbox and gateway), the setup, the test runs
``run_turns``         the agent's first turn, then tests and fix rounds
``run_delivery``      what is delivered; commit, push, pull request, checkpoint
``delivery_fence``    the coordinator's confirmation before every push
``run_report``        the figures so far, the result, the PR's proof of work
``run_context``       the agent's ``JobConfig`` and one run's ``RunContext``
====================  ============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import errno

from claude_cluster.agent.coordinator_client import CoordinatorError
from claude_cluster.agent.delivery_fence import DeliveryConfirmer
from claude_cluster.agent.git import GitError
from claude_cluster.agent.pull_request import PullRequestOpener, PullRequestRequest, github_opener
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.run_context import GitTokenSource, JobConfig, RunContext, git_token
from claude_cluster.agent.run_delivery import Deliverer, has_changes
from claude_cluster.agent.run_environment import open_box, run_baseline, set_up
from claude_cluster.agent.run_policy import resolve_policy
from claude_cluster.agent.run_report import RunEnded, RunProgress
from claude_cluster.agent.run_turns import first_turn, test_and_fix
from claude_cluster.agent.runbox import RunBox
from claude_cluster.agent.runner_choice import RunnerChoice, RunnerUnavailable
from claude_cluster.agent.workspace import Workspace, WorkspaceManager
from claude_cluster.domain.contract import RunPolicy
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import ExecuteTaskRequest, RunResult
from claude_cluster.logging import get_logger
from claude_cluster.runners import Runner

__all__ = [
    "DeliveryConfirmer",
    "GitTokenSource",
    "JobConfig",
    "JobRunner",
    "PullRequestOpener",
    "PullRequestRequest",
]

log = get_logger(__name__)


class JobRunner:
    """Runs one request at a time per call; share one instance between concurrent runs.

    Args:
        config: what every run shares.
        workspaces: prepares and releases the worktrees.
        runner: the agent's own CLI (``claude``, ``codex``, ``aider``, ``command``).
        runners: the runners a run's policy may name instead (``runner:`` of a contract);
            by default the agent's own only.
        open_pull_request: opens the pull request for GitHub repositories; the default
            uses :class:`claude_cluster.github.GitHubClient` against ``github_api_url``.
        github_api_url: ``GITHUB_API_URL``, for the default opener.
        git_tokens: asks the coordinator for a fresh git token ``(run_id, purpose)``
            when the run fetches and when it delivers; dispatches carry none.
        confirm_delivery: the fencing check before every push and pull request (SPEC §5);
            its answer carries the deliver token. ``None`` (tests without a coordinator):
            no check, the deliver token comes from ``git_tokens``.
    """

    def __init__(
        self,
        config: JobConfig,
        *,
        workspaces: WorkspaceManager,
        runner: Runner,
        runners: RunnerChoice | None = None,
        open_pull_request: PullRequestOpener | None = None,
        github_api_url: str = "https://api.github.com",
        git_tokens: GitTokenSource | None = None,
        confirm_delivery: DeliveryConfirmer | None = None,
    ) -> None:
        self.config = config
        self.workspaces = workspaces
        self.runners = runners or RunnerChoice(runner)
        self.runners.default = runner
        self.github_api_url = github_api_url
        self._git_tokens = git_tokens
        self._deliverer = Deliverer(
            workspaces=workspaces,
            open_pull_request=open_pull_request or github_opener(github_api_url),
            git_tokens=git_tokens,
            confirm_delivery=confirm_delivery,
        )

    @property
    def runner(self) -> Runner:
        """The agent's own runner: a run's when its policy names none."""
        return self.runners.default

    @runner.setter
    def runner(self, runner: Runner) -> None:
        self.runners.default = runner

    async def run(self, request: ExecuteTaskRequest, reporter: RunReporter) -> RunResult:
        """Do the run and return its result (cancellation included: the result then says
        ``cancelled`` and carries whatever was used up to that point)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (request.timeout_seconds or self.config.task_timeout)
        progress = RunProgress(started=loop.time(), deadline=deadline)
        ws: Workspace | None = None
        box: RunBox | None = None
        try:
            reporter.event("phase", "preparing the workspace", {"phase": "workspace"})
            ws = await self._prepare(request)
            progress.branch = ws.branch
            reporter.event(
                "workspace",
                f"worktree ready on {ws.branch} (base {ws.base_branch} {ws.base_sha[:12]})",
                {"branch": ws.branch, "base_branch": ws.base_branch, "base_sha": ws.base_sha},
            )
            policy = await resolve_policy(
                request, reporter, ws, progress, timeout=self.config.git_timeout
            )
            runner = self._runner_for(policy, reporter, progress)
            box = await open_box(self.config, request, reporter, ws, policy)
            home = self.config.home_for(request.task_id)
            home.mkdir(parents=True, exist_ok=True)
            ctx = RunContext(
                config=self.config,
                request=request,
                reporter=reporter,
                ws=ws,
                box=box,
                policy=policy,
                progress=progress,
                home=home,
                deadline=deadline,
            )
            return await self._work(ctx, runner)
        except RunEnded as ended:
            return ended.result
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # the agent's disk, not the task: the coordinator requeues without a retry
            return progress.result(
                succeeded=False,
                category=ErrorCategory.DISK_FULL,
                message=f"no space left on the agent's disk: {exc}",
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return progress.result(
                succeeded=False, category=ErrorCategory.CANCELLED, message="the run was stopped"
            )
        finally:
            if box is not None:
                await box.close()
            if ws is not None:
                await self._release(ws)

    def _runner_for(
        self, policy: RunPolicy, reporter: RunReporter, progress: RunProgress
    ) -> Runner:
        """The runner the policy names, or the agent's own.

        Raises:
            RunEnded: this agent does not have it (``contract_error``, before setup and any
                model call: not the agent's fault, SPEC §4b).
        """
        try:
            return self.runners.pick(policy.runner)
        except RunnerUnavailable as exc:
            reporter.event("contract", str(exc), {"runner": policy.runner}, level="error")
            ended = progress.failed(ErrorCategory.CONTRACT_ERROR, str(exc))
            # the coordinator routes the task to an agent that offers this runner
            ended.result.needs_runner = policy.runner
            raise ended from None

    async def _work(self, ctx: RunContext, runner: Runner) -> RunResult:
        """Setup and baseline, the agent's turns and fix rounds, then the delivery."""
        progress = ctx.progress
        await set_up(ctx)
        progress.baseline = await run_baseline(ctx)
        try:
            await first_turn(ctx, runner)
        except RunEnded as stopped:
            return await self._deliverer.checkpoint(ctx, stopped)
        if not await has_changes(ctx.ws, ctx.box):
            return progress.result(
                succeeded=False,
                category=ErrorCategory.NO_CHANGES,
                message="the agent finished without changing anything",
            )
        try:
            await test_and_fix(ctx, runner)
        except RunEnded as stopped:
            return await self._deliverer.checkpoint(ctx, stopped)
        return await self._deliverer.deliver(ctx)

    async def _prepare(self, request: ExecuteTaskRequest) -> Workspace:
        try:
            return await self.workspaces.prepare(
                task_id=request.task_id,
                attempt=request.attempt,
                repository_url=request.repository_url,
                issue_number=request.github_issue_number,
                title=request.title,
                base_branch=request.base_branch,
                branch=request.branch,
                git_token=await git_token(self._git_tokens, request, "fetch"),
            )
        except (GitError, CoordinatorError) as exc:
            category = (
                ErrorCategory.DISK_FULL
                if "no space left on device" in str(exc).lower()
                else ErrorCategory.WORKSPACE_ERROR
            )
            raise RunProgress().failed(category, str(exc)) from None

    async def _release(self, ws: Workspace) -> None:
        # A second cancellation must not leave the worktree locked: finish the release.
        release = asyncio.ensure_future(self.workspaces.release(ws))
        try:
            await asyncio.shield(release)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await release
            raise
        except Exception as exc:
            log.warning("workspace_release_failed", path=str(ws.path), error=str(exc))
