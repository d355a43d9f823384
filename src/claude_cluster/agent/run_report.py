"""What a run reports: its figures so far, its result, and the proof of work of its PR.

:class:`RunProgress` collects what the run has produced (cost, tokens and turns summed
over the fix rounds, the test reports, the branch, the commit, the pull request) and
becomes the :class:`~claude_cluster.domain.wire.RunResult` whichever way the run ends;
:class:`RunEnded` carries such a result out of a phase that ends the run early.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from claude_cluster.agent.pull_request import RunFigures
from claude_cluster.agent.verify import TestReport
from claude_cluster.domain.baseline import TestVerdict
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import RunResult
from claude_cluster.runners import RunnerOutcome

if TYPE_CHECKING:
    from claude_cluster.agent.run_context import RunContext

__all__ = ["RunEnded", "RunProgress", "proof_lines", "run_figures", "tests_failed_message"]

_MESSAGE_LIMIT = 4_000
_EXCERPT_LIMIT = 8_000


@dataclass
class RunProgress:
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

    def failed(self, category: ErrorCategory, message: str) -> RunEnded:
        """The early end of the run with this failure, to raise."""
        return RunEnded(self.result(succeeded=False, category=category, message=message))


class RunEnded(Exception):
    """Ends the run early with a result (control flow between the phases)."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.message)
        self.result = result


def tests_failed_message(progress: RunProgress) -> str:
    """The result's message when the run's own tests still fail."""
    tests = progress.tests
    summary = tests.summary if tests is not None else "the tests failed"
    blamed = progress.verdict.blamed if progress.verdict else ()
    named = f" ({', '.join(blamed[:10])})" if blamed else ""
    return f"tests still fail after {progress.fix_rounds} fix round(s): {summary}{named}"


def proof_lines(ctx: RunContext) -> list[str]:
    """What a reviewer can check the run by, for the pull request body."""
    progress = ctx.progress
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
    if ctx.box.gateway is not None:
        refused = ctx.box.gateway.refused
        blocked = [f"{h} ({refused[h]} attempts)" if refused[h] > 1 else h for h in sorted(refused)]
        lines.append(f"Blocked network hosts: {', '.join(blocked) if blocked else 'none'}")
    if ctx.config.dashboard_url:
        lines.append(
            f"The run on the dashboard: {ctx.config.dashboard_url}/tasks/{ctx.request.task_id}"
        )
    return lines


def run_figures(ctx: RunContext) -> RunFigures:
    """What the run measured, for the pull request body."""
    progress = ctx.progress
    verdict = progress.verdict
    return RunFigures(
        summary=progress.summary,
        changed_files=progress.changed_files,
        tests=progress.tests,
        cost_usd=progress.cost_usd,
        input_tokens=progress.input_tokens,
        output_tokens=progress.output_tokens,
        cache_read_tokens=progress.cache_read_tokens,
        cache_creation_tokens=progress.cache_creation_tokens,
        untested=progress.untested,
        proof=proof_lines(ctx),
        test_changes=(
            verdict.comparison.lines()
            if verdict is not None and verdict.comparison is not None
            else ()
        ),
    )
