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
contract_error      the repository's ``.claude-cluster.yml`` is invalid (before
                    any model call; the message names the key and the line)
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
(:mod:`~claude_cluster.agent.run_policy`), the test environment is set up in the box
(:mod:`~claude_cluster.agent.provision`), and the tests run once on the base commit (the
baseline), so that the result says what the run fixed and what it broke, and failures
that were there before are not the run's (:mod:`~claude_cluster.domain.baseline`). A run
whose tests did not run is *untested*: never reported as tested, and ``when_untested``
decides whether it delivers a pull request, a draft, or nothing.

A follow-up run (review feedback) continues ``request.branch`` and, when this agent still
has the session's transcript, resumes ``request.resume_session_id``. The CLI keeps its
state in a HOME per task under ``<WORKSPACE_PATH>/homes``, which is what makes resuming
possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_cluster import metrics
from claude_cluster.agent.coordinator_client import CoordinatorError, CoordinatorRejected
from claude_cluster.agent.deliver import (
    DEFAULT_PROTECTED_PATHS,
    Delivery,
    ProtectedPathError,
    commit_and_push,
    deliver_run_repository,
)
from claude_cluster.agent.git import DeliveryError, GitError, WorkspaceError, git
from claude_cluster.agent.prompt import feedback_prompt, fix_prompt, issue_prompt
from claude_cluster.agent.provision import cache_env, plan_setup, run_setup
from claude_cluster.agent.pull_request import (
    PullRequestOpener,
    PullRequestRequest,
    RunFigures,
    describe,
    github_opener,
)
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.run_policy import ContractError, load_run_policy
from claude_cluster.agent.runbox import GatewayConfig, RunBox
from claude_cluster.agent.sandbox import Sandbox, SandboxUnavailable
from claude_cluster.agent.verify import TestReport, run_tests
from claude_cluster.agent.workspace import Workspace, WorkspaceManager
from claude_cluster.domain.baseline import TestVerdict, judge
from claude_cluster.domain.contract import RunPolicy
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import DeliveryConfirmation, ExecuteTaskRequest, RunResult
from claude_cluster.logging import get_logger
from claude_cluster.runners import Runner, RunnerEvent, RunnerOutcome, RunSpec

__all__ = [
    "DeliveryConfirmer",
    "GitTokenSource",
    "JobConfig",
    "JobRunner",
    "PullRequestOpener",
    "PullRequestRequest",
]

#: asks the coordinator for a fresh git token: ``(run_id, "fetch" | "deliver") → token``
GitTokenSource = Callable[[int, str], Awaitable[str | None]]
#: the fencing check before a delivery: ``run_id → confirmation`` (raises
#: :class:`CoordinatorRejected` when the run no longer holds its task)
DeliveryConfirmer = Callable[[int], Awaitable[DeliveryConfirmation]]

#: back-off between confirmation attempts while the coordinator does not answer
CONFIRM_RETRY_FIRST = 1.0
CONFIRM_RETRY_MAX = 15.0

log = get_logger(__name__)

_MESSAGE_LIMIT = 4_000
#: where setup finds its tools (uv beside the agent's interpreter is passed by path)
_TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"
_EXCERPT_LIMIT = 8_000


@dataclass(frozen=True)
class JobConfig:
    """What every run of this agent shares.

    Attributes:
        agent_id: shown in pull requests and logs.
        homes_dir: parent of the per-task HOME directories of the CLI.
        specialties: the agent's specialties, for the prompt's context section.
        runner_env: credentials and settings for the runner (``ANTHROPIC_API_KEY``, …).
        model: ``CLAUDE_MODEL``.
        max_turns: ``CLAUDE_MAX_TURNS``.
        task_timeout: wall time of a run when the request names none (``TASK_TIMEOUT``).
        stall_timeout: output-idle limit of the runner (``STALL_TIMEOUT``).
        result_grace: how long the CLI may linger after its result line (``RESULT_GRACE``).
        max_fix_rounds: ``MAX_FIX_ROUNDS``.
        test_timeout: ``TEST_TIMEOUT``.
        git_user_name: commit author (``GIT_USER_NAME``).
        git_user_email: commit e-mail (``GIT_USER_EMAIL``).
        git_timeout: seconds a single git command may take.
        sandbox: the sandbox every process of a run starts in; ``None`` runs them
            unconfined (``RUN_SANDBOX=off``, said in every run's events and PR).
        gateway: the model API and egress allowlist of the runs' gateways.
        state_dir: the daemon's own directory for the runs' sockets and tmp (no run sees it).
        readable: more read-only paths every run needs (the CLI when it lives elsewhere).
        protected_paths: paths a run may not change (refused at delivery).
        dashboard_url: the coordinator's address, for the run's link in pull requests.
    """

    agent_id: str
    homes_dir: Path
    specialties: tuple[str, ...] = ()
    runner_env: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    max_turns: int | None = None
    task_timeout: float = 3600.0
    stall_timeout: float = 300.0
    result_grace: float = 10.0
    max_fix_rounds: int = 2
    test_timeout: float = 900.0
    git_user_name: str = "Claude Code Cluster"
    git_user_email: str = "claude-cluster@localhost"
    git_timeout: float = 600.0
    sandbox: Sandbox | None = None
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    state_dir: Path | None = None
    readable: tuple[Path, ...] = ()
    protected_paths: tuple[str, ...] = DEFAULT_PROTECTED_PATHS
    dashboard_url: str | None = None


@dataclass
class _Progress:
    """What the run has produced so far; becomes the result whichever way it ends."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    num_turns: int = 0
    session_id: str | None = None
    branch: str | None = None
    commit_sha: str | None = None
    pr_number: int | None = None
    pr_url: str | None = None
    tests: TestReport | None = None
    #: the tests on the base commit, before the agent
    baseline: TestReport | None = None
    verdict: TestVerdict | None = None
    #: why the tests did not run (setup failed, no test command, tool missing)
    untested: str | None = None
    fix_rounds: int = 0
    #: when the run started (the event loop's clock), for its duration
    started: float = 0.0
    #: when the run's wall time runs out (the event loop's clock)
    deadline: float = 0.0
    #: until when the coordinator's delivery confirmation holds (the event loop's clock)
    deliver_by: float | None = None
    changed_files: list[str] = field(default_factory=list)
    summary: str = ""

    def add(self, outcome: RunnerOutcome) -> None:
        self.cost_usd += outcome.cost_usd
        self.input_tokens += outcome.input_tokens
        self.output_tokens += outcome.output_tokens
        self.cache_read_tokens += outcome.cache_read_tokens
        self.cache_creation_tokens += outcome.cache_creation_tokens
        self.num_turns += outcome.num_turns
        self.session_id = outcome.session_id or self.session_id
        if outcome.succeeded and outcome.message:
            self.summary = outcome.message

    def result(
        self,
        *,
        succeeded: bool,
        category: ErrorCategory | None = None,
        message: str = "",
        retry_after: float | None = None,
    ) -> RunResult:
        tests = self.tests
        excerpt = tests.output_tail if tests is not None and tests.ok is False else ""
        return RunResult(
            succeeded=succeeded,
            error_category=None if succeeded else (category or ErrorCategory.EXECUTION_ERROR),
            message=message[:_MESSAGE_LIMIT],
            retry_after_seconds=retry_after,
            cost_usd=self.cost_usd,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            num_turns=self.num_turns,
            session_id=self.session_id,
            branch=self.branch,
            commit_sha=self.commit_sha,
            pr_number=self.pr_number,
            pr_url=self.pr_url,
            tests_command=tests.command_line or None if tests else None,
            tests_passed=tests.passed if tests else None,
            tests_failed=tests.failed if tests else None,
            tests_ok=None if self.untested else (tests.ok if tests else None),
            fix_rounds=self.fix_rounds,
            changed_files=self.changed_files[:1000],
            log_excerpt=excerpt[-_EXCERPT_LIMIT:],
        )


class _Failed(Exception):
    """Ends the run early with a result (internal control flow)."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.message)
        self.result = result


class JobRunner:
    """Runs one request at a time per call; share one instance between concurrent runs.

    Args:
        config: what every run shares.
        workspaces: prepares and releases the worktrees.
        runner: the agent CLI (``claude``, ``codex``, ``aider``, ``command``).
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
        open_pull_request: PullRequestOpener | None = None,
        github_api_url: str = "https://api.github.com",
        git_tokens: GitTokenSource | None = None,
        confirm_delivery: DeliveryConfirmer | None = None,
    ) -> None:
        self.config = config
        self._confirm_delivery = confirm_delivery
        self.workspaces = workspaces
        self.runner = runner
        self.github_api_url = github_api_url
        self._open_pull_request = open_pull_request or github_opener(github_api_url)
        self._git_tokens = git_tokens

    async def run(self, request: ExecuteTaskRequest, reporter: RunReporter) -> RunResult:
        """Do the run and return its result (cancellation included: the result then says
        ``cancelled`` and carries whatever was used up to that point)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (request.timeout_seconds or self.config.task_timeout)
        progress = _Progress(started=loop.time(), deadline=deadline)
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
            policy = await self._policy(request, reporter, ws, progress)
            box = await self._open_box(request, reporter, ws, policy)
            return await self._work(request, reporter, ws, box, progress, deadline, policy)
        except _Failed as failed:
            return failed.result
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

    # --- the steps -----------------------------------------------------------------------

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
                git_token=await self._token(request, "fetch"),
            )
        except (GitError, CoordinatorError) as exc:
            category = (
                ErrorCategory.DISK_FULL
                if "no space left on device" in str(exc).lower()
                else ErrorCategory.WORKSPACE_ERROR
            )
            raise _Failed(
                _Progress().result(succeeded=False, category=category, message=str(exc))
            ) from None

    async def _token(self, request: ExecuteTaskRequest, purpose: str) -> str | None:
        """A fresh token for an http(s) repository or a pull request, from the coordinator."""
        wanted = request.repository_url.startswith(("https://", "http://")) or (
            purpose == "deliver" and request.open_pull_request
        )
        if self._git_tokens is None or not wanted:
            return None
        return await self._git_tokens(request.run_id, purpose)

    def home_for(self, task_id: int) -> Path:
        """The CLI's HOME for a task (kept across the task's runs, so sessions resume)."""
        return self.config.homes_dir / f"task-{task_id}"

    async def _policy(
        self, request: ExecuteTaskRequest, reporter: RunReporter, ws: Workspace, progress: _Progress
    ) -> RunPolicy:
        """The repository's contract at the base commit, within the task's limits."""
        try:
            policy = await load_run_policy(
                ws.mirror, ws.base_sha, request, timeout=self.config.git_timeout
            )
        except ContractError as exc:
            message = f"invalid repository contract: {exc}"
            reporter.event("contract", message, {"error": str(exc)}, level="error")
            raise _Failed(
                progress.result(
                    succeeded=False, category=ErrorCategory.CONTRACT_ERROR, message=message
                )
            ) from None
        except GitError as exc:
            raise _Failed(
                progress.result(
                    succeeded=False, category=ErrorCategory.WORKSPACE_ERROR, message=str(exc)
                )
            ) from None
        reporter.event(
            "contract",
            f"{policy.source or 'no contract file'}: setup {len(policy.setup) or 'detected'}, "
            f"tests {policy.test or 'detected'}, "
            f"network {', '.join(policy.network_allow) or 'none'}",
            {
                "source": policy.source,
                "test": policy.test,
                "network_allow": list(policy.network_allow),
                "protected_paths": list(policy.protected_paths),
                "when_tests_fail": policy.when_tests_fail,
                "when_untested": policy.when_untested,
                "baseline": policy.baseline,
            },
        )
        for note in policy.notes:
            reporter.event("contract", note, {}, level="warning")
        return policy

    def env_cache(self, ws: Workspace) -> Path:
        """The repository's own tool caches (uv, npm, go, cargo), kept between its runs."""
        return self.config.homes_dir.parent / "envcache" / ws.mirror.name

    async def _open_box(
        self, request: ExecuteTaskRequest, reporter: RunReporter, ws: Workspace, policy: RunPolicy
    ) -> RunBox:
        sandbox = self.config.sandbox
        if sandbox is None or not sandbox.enabled:
            reporter.event(
                "sandbox",
                "RUN_SANDBOX=off: this run is NOT confined (it can read the agent's files "
                "and credentials and reach the network)",
                {"sandbox": "off"},
                level="warning",
            )
            return RunBox(None, None, None, None)
        home = self.home_for(request.task_id)
        home.mkdir(parents=True, exist_ok=True)

        def on_event(kind: str, message: str, data: dict[str, Any], level: str) -> None:
            reporter.event(kind, message, data, level)

        state_dir = self.config.state_dir or self.config.homes_dir.parent / "runs"
        cache = self.env_cache(ws)
        cache.mkdir(parents=True, exist_ok=True)
        try:
            box = await RunBox.open(
                sandbox,
                run_id=request.run_id,
                state_dir=state_dir,
                repository=ws.path,
                home=home,
                readable=(ws.mirror / "objects", *self.config.readable),
                gateway=self.config.gateway,
                allow=policy.network_allow,
                budget_usd=policy.budget_usd,
                on_event=on_event,
                writable=(cache,),
            )
        except (SandboxUnavailable, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise
            # the agent's sandbox or gateway, not the task: requeued without a retry
            message = f"the run's sandbox could not start: {exc}"
            reporter.event("sandbox", message, {"error": str(exc)}, level="error")
            raise _Failed(
                _Progress().result(
                    succeeded=False, category=ErrorCategory.SANDBOX_ERROR, message=message
                )
            ) from None
        reporter.event(
            "sandbox",
            "the run is confined (bubblewrap; network only through the agent's gateway)",
            {"sandbox": "on"},
        )
        return box

    async def _work(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        ws: Workspace,
        box: RunBox,
        progress: _Progress,
        deadline: float,
        policy: RunPolicy,
    ) -> RunResult:
        home = self.home_for(request.task_id)
        home.mkdir(parents=True, exist_ok=True)
        await self._setup(reporter, ws, box, progress, policy, home)
        if progress.untested is None and policy.baseline:
            progress.baseline = await self._test(
                request, reporter, ws, box, deadline, policy, kind="baseline"
            )
        resume = request.resume_session_id
        if resume and not _has_transcript(home, resume):
            reporter.event(
                "phase",
                "the earlier session is not on this agent; starting a new one",
                level="warning",
            )
            resume = None
        if resume:
            prompt = feedback_prompt(request)
        else:
            prompt = issue_prompt(request, specialties=self.config.specialties, worktree=ws.path)
        if policy.instructions:
            prompt += f"\n\n# The repository's instructions\n\n{policy.instructions}\n"
        reporter.event("phase", "running the agent", {"phase": "agent", "runner": self.runner.name})
        try:
            await self._run_agent(
                request, reporter, ws, box, home, progress, prompt, resume, deadline, 0, policy
            )
        except _Failed as stopped:
            return await self._checkpoint(request, reporter, ws, box, progress, policy, stopped)

        if not await _has_changes(ws, box):
            return progress.result(
                succeeded=False,
                category=ErrorCategory.NO_CHANGES,
                message="the agent finished without changing anything",
            )
        rounds = self.config.max_fix_rounds
        issue_text = f"{request.title}\n{request.description}"
        while progress.untested is None:
            reporter.phase("testing")
            report = await self._test(request, reporter, ws, box, deadline, policy)
            progress.tests = report
            if report.ok is None:
                progress.untested = report.reason or "the tests did not run"
                break
            before = progress.baseline.outcomes if progress.baseline else None
            progress.verdict = judge(
                before, report.outcomes, ok=bool(report.ok), issue_text=issue_text
            )
            if progress.verdict.comparison is not None:
                lines = progress.verdict.comparison.lines()
                reporter.event("test_changes", "; ".join(lines) or "no change", {"lines": lines})
            if not progress.verdict.failing or progress.fix_rounds >= rounds:
                break
            progress.fix_rounds += 1
            reporter.phase("in_progress")
            reporter.event(
                "phase",
                f"fix round {progress.fix_rounds} of {rounds}",
                {"phase": "fix", "round": progress.fix_rounds},
            )
            blamed = progress.verdict.blamed
            focus = f"Fix these tests: {', '.join(blamed[:50])}\n\n" if blamed else ""
            prompt = fix_prompt(
                report.command_line,
                focus + report.output_tail,
                round_number=progress.fix_rounds,
                rounds=rounds,
            )
            try:
                await self._run_agent(
                    request, reporter, ws, box, home, progress, prompt, progress.session_id,
                    deadline, progress.fix_rounds, policy,
                )  # fmt: skip
            except _Failed as stopped:
                return await self._checkpoint(request, reporter, ws, box, progress, policy, stopped)
        return await self._deliver(request, reporter, ws, box, progress, policy)

    async def _setup(
        self,
        reporter: RunReporter,
        ws: Workspace,
        box: RunBox,
        progress: _Progress,
        policy: RunPolicy,
        home: Path,
    ) -> None:
        """Set up the test environment in the box; a failure makes the run untested."""
        plan = plan_setup(ws.path, policy, cache_dir=self.env_cache(ws))
        if not plan.steps and not plan.missing:
            return
        reporter.event(
            "phase",
            f"setting up the test environment ({plan.source})",
            {"phase": "setup", "steps": [step.name for step in plan.steps]},
        )
        env = {"PATH": _TOOL_PATH, "HOME": str(home), "LANG": "C.UTF-8", **box.tool_env()}
        report = await run_setup(plan, box.run, cwd=ws.path, env=env)
        for step in report.steps:
            reporter.event(
                "setup",
                f"{step.name}: exit {step.exit_code} in {step.duration:.1f}s",
                {"step": step.name, "exit_code": step.exit_code, "output_tail": step.output_tail},
                level="info" if step.exit_code == 0 else "warning",
            )
        if not report.ok:
            progress.untested = f"setup failed: {report.reason}"
            reporter.event("untested", progress.untested, {}, level="warning")

    async def _checkpoint(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        ws: Workspace,
        box: RunBox,
        progress: _Progress,
        policy: RunPolicy,
        stopped: _Failed,
    ) -> RunResult:
        """A run stopped by its turns or budget keeps its paid work: push it as a branch."""
        result = stopped.result
        checkpoint = (ErrorCategory.MAX_TURNS, ErrorCategory.BUDGET_EXCEEDED)
        if result.error_category not in checkpoint or not await _has_changes(ws, box):
            return result
        pushed = await self._push(request, reporter, ws, box, progress, policy)
        if isinstance(pushed, RunResult):
            return result  # the push failed; the stop is still the reason
        reporter.event("checkpoint", f"work so far pushed to {ws.branch}", {"branch": ws.branch})
        return progress.result(
            succeeded=False,
            category=result.error_category,
            message=f"{result.message}; the work so far was pushed to branch {ws.branch} "
            "as a checkpoint",
        )

    async def _run_agent(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        ws: Workspace,
        box: RunBox,
        home: Path,
        progress: _Progress,
        prompt: str,
        resume: str | None,
        deadline: float,
        fix_round: int,
        policy: RunPolicy,
    ) -> None:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 1:
            raise _Failed(
                progress.result(
                    succeeded=False,
                    category=ErrorCategory.TIMEOUT,
                    message="the run's wall time ran out before the agent could continue",
                )
            )
        spec = RunSpec(
            prompt=prompt,
            cwd=ws.path,
            home=home,
            env=box.agent_env(self._runner_env(request, ws, fix_round)),
            model=policy.model or self.config.model,
            max_turns=_smaller(policy.max_turns, self.config.max_turns),
            budget_usd=_remaining_budget(policy.budget_usd, progress.cost_usd),
            resume_session_id=resume,
            wall_timeout=remaining,
            idle_timeout=self.config.stall_timeout,
            result_grace=self.config.result_grace,
            wrap=box.wrap if box.confined else None,
        )

        async def forward(event: RunnerEvent) -> None:
            reporter.event(event.kind, event.message, event.data, event.level)

        outcome = await self.runner.run(spec, forward)
        progress.add(outcome)
        reporter.event(
            "runner_finished",
            outcome.message[:500],
            {
                "succeeded": outcome.succeeded,
                "error_category": outcome.error_category,
                "exit_code": outcome.exit_code,
                "cost_usd": outcome.cost_usd,
                "num_turns": outcome.num_turns,
                "fix_round": fix_round,
            },
            level="info" if outcome.succeeded else "warning",
        )
        if box.gateway is not None and box.gateway.over_budget:
            raise _Failed(
                progress.result(
                    succeeded=False,
                    category=ErrorCategory.BUDGET_EXCEEDED,
                    message=f"the gateway cut the run off at its budget of ${policy.budget_usd:g}",
                )
            )
        if not outcome.succeeded:
            raise _Failed(
                progress.result(
                    succeeded=False,
                    category=outcome.error_category,
                    message=outcome.message,
                    retry_after=outcome.retry_after_seconds,
                )
            )

    async def _test(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        ws: Workspace,
        box: RunBox,
        deadline: float,
        policy: RunPolicy,
        *,
        kind: str = "tests",
    ) -> TestReport:
        """Run the tests; ``kind`` ``baseline`` is the run on the base commit, before the agent."""
        remaining = max(1.0, deadline - asyncio.get_running_loop().time())
        if kind == "baseline":
            reporter.event("phase", "running the tests on the base commit", {"phase": "baseline"})
        else:
            reporter.event("phase", "running the tests", {"phase": "tests"})
        report = await run_tests(
            ws.path,
            command=policy.test,
            timeout=min(self.config.test_timeout, remaining),
            env={**cache_env(self.env_cache(ws)), **box.tool_env()},
            wrap=box.wrap if box.confined else None,
        )
        reporter.event(
            kind,
            report.summary,
            {
                "command": report.command_line,
                "passed": report.passed,
                "failed": report.failed,
                "errors": report.errors,
                "skipped": report.skipped,
                "ok": report.ok,
                "exit_code": report.exit_code,
                "duration": round(report.duration, 3),
                "named": len(report.outcomes),
                # what people read on the dashboard under the summary
                "output_tail": report.output_tail[-4000:],
            },
            level="info" if report.ok is not False or kind == "baseline" else "warning",
        )
        return report

    async def _push(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        ws: Workspace,
        box: RunBox,
        progress: _Progress,
        policy: RunPolicy,
    ) -> RunResult | str | None:
        """Commit and push the run's work; a failure's result, or the token for the PR.

        First the fencing check: no confirmation from the coordinator that the run still
        holds its task, no push (:meth:`_confirm`)."""
        reporter.event("phase", "committing and pushing", {"phase": "deliver"})
        title = " ".join(request.title.split())
        summary = f"Resolve issue #{request.github_issue_number}: {title}"[:120]
        tokens: list[str | None] = []
        confirmed = await self._confirm(request, reporter, progress)
        if isinstance(confirmed, RunResult):
            return confirmed

        async def token() -> str | None:
            if confirmed is None:
                tokens.append(await self._token(request, "deliver"))
            else:
                tokens.append(confirmed.token)
            return tokens[-1]

        protected = tuple(dict.fromkeys([*self.config.protected_paths, *policy.protected_paths]))
        try:
            # no confirmation (no coordinator to ask): deliver_by is None, no deadline
            async with asyncio.timeout_at(progress.deliver_by):
                delivery = await self._commit_and_push(request, ws, box, summary, token, protected)
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
        request: ExecuteTaskRequest,
        ws: Workspace,
        box: RunBox,
        summary: str,
        token: Callable[[], Awaitable[str | None]],
        protected: tuple[str, ...],
    ) -> Delivery:
        """Commit and push, inside the run's box when it is confined."""
        if box.confined:
            return await deliver_run_repository(
                ws,
                box,
                run_id=request.run_id,
                task_id=request.task_id,
                summary=summary,
                author_name=self.config.git_user_name,
                author_email=self.config.git_user_email,
                remote_url=request.repository_url,
                git_token=token,
                mirror_lock=lambda: self.workspaces.mirrors.locked(ws.mirror),
                protected=protected,
                timeout=self.config.git_timeout,
            )
        return await commit_and_push(
            ws,
            task_id=request.task_id,
            summary=summary,
            author_name=self.config.git_user_name,
            author_email=self.config.git_user_email,
            remote_url=request.repository_url,
            git_token=await token(),
            timeout=self.config.git_timeout,
        )

    async def _confirm(
        self, request: ExecuteTaskRequest, reporter: RunReporter, progress: _Progress
    ) -> DeliveryConfirmation | RunResult | None:
        """The fencing check before a delivery (SPEC §5 Fencing at delivery).

        Returns the confirmation (``progress.deliver_by`` set: the delivery must be over by
        then), ``None`` when this runner has no coordinator to ask, or the result of a
        discarded delivery: the coordinator refused (the run no longer holds its task:
        someone else has it), or it did not answer before the run's wall time ran out.
        While it does not answer, the result is kept and the question asked again with
        back-off."""
        if self._confirm_delivery is None:
            return None
        loop = asyncio.get_running_loop()
        delay = CONFIRM_RETRY_FIRST
        waiting_said = False
        while True:
            asked = loop.time()
            try:
                confirmation = await self._confirm_delivery(request.run_id)
            except CoordinatorRejected as exc:
                return self._discard(request, reporter, progress, "refused", str(exc))
            except CoordinatorError as exc:
                left = progress.deadline - loop.time()
                if left <= 0:
                    return self._discard(
                        request,
                        reporter,
                        progress,
                        "unconfirmed",
                        f"no confirmation before the run's wall time ran out: {exc}",
                    )
                if not waiting_said:
                    waiting_said = True
                    reporter.event(
                        "delivery_waiting",
                        "the coordinator did not confirm the delivery; the result is kept "
                        f"and the confirmation asked for again until the wall time ({left:.0f}"
                        " s) runs out",
                        {"error": str(exc)},
                        level="warning",
                    )
                log.warning(
                    "delivery_unconfirmed", run_id=request.run_id, error=str(exc),
                    retry_in=delay, wall_time_left=round(left, 1),
                )  # fmt: skip
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, CONFIRM_RETRY_MAX)
                continue
            progress.deliver_by = asked + confirmation.deliver_within_seconds
            reporter.event(
                "delivery_confirmed",
                f"the coordinator confirmed that run {request.run_id} still holds the task",
                {"deliver_within_seconds": confirmation.deliver_within_seconds},
            )
            return confirmation

    def _discard(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        progress: _Progress,
        reason: str,
        detail: str,
    ) -> RunResult:
        """Give up a delivery: nothing is pushed, and the record says why."""
        message = f"the result was discarded, nothing was delivered: {detail}"
        reporter.event(
            "delivery_discarded", message, {"reason": reason, "detail": detail}, level="warning"
        )
        log.warning(
            "delivery_discarded", run_id=request.run_id, task_id=request.task_id,
            reason=reason, detail=detail,
        )  # fmt: skip
        metrics.AGENT_DELIVERIES_DISCARDED.labels(self.config.agent_id, reason).inc()
        return progress.result(succeeded=False, category=ErrorCategory.LOST, message=message)

    async def _deliver(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        ws: Workspace,
        box: RunBox,
        progress: _Progress,
        policy: RunPolicy,
    ) -> RunResult:
        """Deliver as the contract says for tested, failing and untested runs."""
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
            why = self._tests_failed(progress) if failing else f"untested: {progress.untested}"
            return progress.result(
                succeeded=False,
                category=category,
                message=f"{why}; nothing was delivered (the repository's contract says fail)",
            )
        pushed = await self._push(request, reporter, ws, box, progress, policy)
        if isinstance(pushed, RunResult):
            return pushed
        draft = what == "draft"
        if request.open_pull_request and pushed and (draft or not failing):
            loop = asyncio.get_running_loop()
            if progress.deliver_by is not None and loop.time() >= progress.deliver_by:
                # the push took the whole window: the pull request needs a fresh check
                again = await self._confirm(request, reporter, progress)
                if isinstance(again, RunResult):
                    return again
            try:
                async with asyncio.timeout_at(progress.deliver_by):
                    failure = await self._pull_request(
                        request, reporter, ws, progress, pushed, box, draft=draft
                    )
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
                message=f"{self._tests_failed(progress)}; {where} was pushed for inspection",
            )
        if progress.untested:
            tests_line = f"untested: {progress.untested}"
        else:
            tests_line = tests.summary if tests is not None else "no tests ran"
        return progress.result(
            succeeded=True, message=f"delivered {where} ({tests_line})\n\n{progress.summary}"
        )

    def _proof(self, request: ExecuteTaskRequest, progress: _Progress, box: RunBox) -> list[str]:
        """What a reviewer can check the run by, for the pull request body."""
        lines = []
        tests = progress.tests
        if tests is not None and tests.command:
            lines.append(
                f"Tests: `{tests.command_line}` exited {tests.exit_code} in {tests.duration:.1f} s"
                f" after {progress.fix_rounds} fix round(s)"
            )
        base = progress.baseline
        if base is not None:
            lines.append(f"On the base commit, before the run: {base.summary}")
        lines.append(f"Files changed: {len(progress.changed_files)}")
        elapsed = asyncio.get_running_loop().time() - progress.started
        lines.append(f"Turns: {progress.num_turns}; run time: {elapsed:.0f} s")
        if progress.session_id:
            lines.append(f"Claude session: `{progress.session_id}`")
        if box.gateway is not None:
            blocked = sorted(set(box.gateway.refused_hosts))
            lines.append(f"Blocked network hosts: {', '.join(blocked) if blocked else 'none'}")
        if self.config.dashboard_url:
            lines.append(
                f"The run on the dashboard: {self.config.dashboard_url}/tasks/{request.task_id}"
            )
        return lines

    @staticmethod
    def _tests_failed(progress: _Progress) -> str:
        tests = progress.tests
        summary = tests.summary if tests is not None else "the tests failed"
        blamed = progress.verdict.blamed if progress.verdict else ()
        named = f" ({', '.join(blamed[:10])})" if blamed else ""
        return f"tests still fail after {progress.fix_rounds} fix round(s): {summary}{named}"

    async def _pull_request(
        self,
        request: ExecuteTaskRequest,
        reporter: RunReporter,
        ws: Workspace,
        progress: _Progress,
        token: str,
        box: RunBox,
        *,
        draft: bool = False,
    ) -> RunResult | None:
        from claude_cluster.github import GitHubError  # only runs opening a PR load GitHub

        figures = RunFigures(
            summary=progress.summary,
            changed_files=progress.changed_files,
            tests=progress.tests,
            cost_usd=progress.cost_usd,
            input_tokens=progress.input_tokens,
            output_tokens=progress.output_tokens,
            cache_read_tokens=progress.cache_read_tokens,
            cache_creation_tokens=progress.cache_creation_tokens,
            untested=progress.untested,
            proof=self._proof(request, progress, box),
            test_changes=(
                progress.verdict.comparison.lines()
                if progress.verdict is not None and progress.verdict.comparison is not None
                else ()
            ),
        )
        pr = describe(
            request,
            head=ws.branch,
            base=ws.base_branch,
            figures=figures,
            agent_id=self.config.agent_id,
            model=self.config.model,
            token=token,
            confined=box.confined,
            draft=draft,
        )
        try:
            number, url = await self._open_pull_request(pr)
        except GitHubError as exc:
            return progress.result(
                succeeded=False,
                category=ErrorCategory.DELIVERY_ERROR,
                message=f"the branch {ws.branch} was pushed but the pull request failed: {exc}",
            )
        progress.pr_number, progress.pr_url = number, url
        reporter.event(
            "pull_request", f"pull request #{number}: {url}", {"number": number, "url": url}
        )
        return None

    # --- helpers -------------------------------------------------------------------------

    def _runner_env(
        self, request: ExecuteTaskRequest, ws: Workspace, fix_round: int
    ) -> dict[str, str]:
        """Credentials plus the task, for runners that read it from the environment."""
        env = dict(self.config.runner_env)
        env.update(
            {
                "CLUSTER_TASK_ID": str(request.task_id),
                "CLUSTER_RUN_ID": str(request.run_id),
                "CLUSTER_ATTEMPT": str(request.attempt),
                "CLUSTER_REPOSITORY": request.github_repository,
                "CLUSTER_ISSUE_NUMBER": str(request.github_issue_number),
                "CLUSTER_ISSUE_TITLE": request.title,
                "CLUSTER_BRANCH": ws.branch,
                "CLUSTER_FIX_ROUND": str(fix_round),
            }
        )
        return env

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


async def _has_changes(ws: Workspace, box: RunBox) -> bool:
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


def _has_transcript(home: Path, session_id: str) -> bool:
    projects = home / ".claude" / "projects"
    return projects.is_dir() and any(projects.glob(f"*/{session_id}.jsonl"))


def _smaller(a: int | None, b: int | None) -> int | None:
    return min(a, b) if a is not None and b is not None else (a if a is not None else b)


def _remaining_budget(budget: float | None, spent: float) -> float | None:
    if budget is None:
        return None
    return max(0.01, budget - spent)
