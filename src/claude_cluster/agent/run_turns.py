"""The agent's turns of a run: the first turn on the issue, then tests and fix rounds.

:func:`first_turn` prompts the runner with the issue (or, for review feedback, resumes the
task's session when this agent still has its transcript); :func:`test_and_fix` runs the
tests, judges them against the baseline (:mod:`~claude_cluster.domain.baseline`) and gives
the agent up to ``max_fix_rounds`` rounds to fix the failures the run is to blame for. A
turn that fails ends the run with :class:`~claude_cluster.agent.run_report.RunEnded`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from claude_cluster.agent.prompt import feedback_prompt, fix_prompt, issue_prompt
from claude_cluster.agent.round_progress import ROUND_PROGRESS, RoundMeter
from claude_cluster.agent.run_context import RunContext
from claude_cluster.agent.run_environment import run_test_phase
from claude_cluster.agent.run_report import RunEnded
from claude_cluster.domain.baseline import judge
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.runners import Runner, RunnerEvent, RunSpec

__all__ = ["agent_turn", "first_turn", "runner_env", "test_and_fix"]


async def first_turn(ctx: RunContext, runner: Runner) -> None:
    """The agent's turn on the issue, or on the review feedback of a follow-up run."""
    request, reporter = ctx.request, ctx.reporter
    resume = request.resume_session_id
    if resume and not _has_transcript(ctx.home, resume):
        reporter.event(
            "phase",
            "the earlier session is not on this agent; starting a new one",
            level="warning",
        )
        resume = None
    if resume:
        prompt = feedback_prompt(request)
    else:
        prompt = issue_prompt(request, specialties=ctx.config.specialties, worktree=ctx.ws.path)
    if ctx.policy.instructions:
        prompt += f"\n\n# The repository's instructions\n\n{ctx.policy.instructions}\n"
    reporter.event("phase", "running the agent", {"phase": "agent", "runner": runner.name})
    await agent_turn(ctx, runner, prompt, resume, fix_round=0)


async def test_and_fix(ctx: RunContext, runner: Runner) -> None:
    """Test, and give the agent fix rounds while the run's own tests fail.

    Leaves ``progress.tests`` and ``progress.verdict`` (or ``progress.untested``) set for
    the delivery decision."""
    request, reporter, progress = ctx.request, ctx.reporter, ctx.progress
    rounds = ctx.config.max_fix_rounds
    issue_text = f"{request.title}\n{request.description}"
    while progress.untested is None:
        reporter.phase("testing")
        report = await run_test_phase(ctx)
        progress.tests = report
        if report.ok is None:
            progress.untested = report.reason or "the tests did not run"
            break
        before = progress.baseline.outcomes if progress.baseline else None
        progress.verdict = judge(before, report.outcomes, ok=bool(report.ok), issue_text=issue_text)
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
        await agent_turn(ctx, runner, prompt, progress.session_id, fix_round=progress.fix_rounds)


async def agent_turn(
    ctx: RunContext, runner: Runner, prompt: str, resume: str | None, *, fix_round: int
) -> None:
    """One run of the agent CLI; its cost, tokens and turns are added to the progress.

    Raises:
        RunEnded: the wall time ran out, the gateway cut the run off at its budget, or
            the runner failed (its outcome's category).
    """
    progress, box, policy, config = ctx.progress, ctx.box, ctx.policy, ctx.config
    remaining = ctx.deadline - asyncio.get_running_loop().time()
    if remaining <= 1:
        raise progress.failed(
            ErrorCategory.TIMEOUT, "the run's wall time ran out before the agent could continue"
        )
    spec = RunSpec(
        prompt=prompt,
        cwd=ctx.ws.path,
        home=ctx.home,
        env=box.agent_env(runner_env(ctx, fix_round)),
        model=policy.model or config.model,
        max_turns=_smaller(policy.max_turns, config.max_turns),
        budget_usd=_remaining_budget(policy.budget_usd, progress.cost_usd),
        resume_session_id=resume,
        wall_timeout=remaining,
        idle_timeout=config.stall_timeout,
        result_grace=config.result_grace,
        wrap=box.wrap if box.confined else None,
    )

    # the round's turns and cost while it runs; its runner_finished (below, queued after
    # the runner returned, so after the meter's last report) has the real figures
    gateway = box.gateway
    meter = RoundMeter(
        fix_round,
        interval=config.progress_interval,
        spent=(lambda: gateway.usage.cost_usd) if gateway is not None else None,
    )

    async def forward(event: RunnerEvent) -> None:
        if not meter.observe(event):
            ctx.reporter.event(event.kind, event.message, event.data, event.level)
        if (so_far := meter.due()) is not None:
            ctx.reporter.event(ROUND_PROGRESS, meter.message(so_far), so_far)

    outcome = await runner.run(spec, forward)
    progress.add(outcome)
    ctx.reporter.event(
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
        raise progress.failed(
            ErrorCategory.BUDGET_EXCEEDED,
            f"the gateway cut the run off at its budget of ${policy.budget_usd:g}",
        )
    if not outcome.succeeded:
        raise RunEnded(
            progress.result(
                succeeded=False,
                category=outcome.error_category,
                message=outcome.message,
                retry_after=outcome.retry_after_seconds,
            )
        )


def runner_env(ctx: RunContext, fix_round: int) -> dict[str, str]:
    """Credentials plus the task, for runners that read it from the environment."""
    request = ctx.request
    env = dict(ctx.config.runner_env)
    env.update(
        {
            "CLUSTER_TASK_ID": str(request.task_id),
            "CLUSTER_RUN_ID": str(request.run_id),
            "CLUSTER_ATTEMPT": str(request.attempt),
            "CLUSTER_REPOSITORY": request.github_repository,
            "CLUSTER_ISSUE_NUMBER": str(request.github_issue_number),
            "CLUSTER_ISSUE_TITLE": request.title,
            "CLUSTER_BRANCH": ctx.ws.branch,
            "CLUSTER_FIX_ROUND": str(fix_round),
        }
    )
    return env


def _has_transcript(home: Path, session_id: str) -> bool:
    projects = home / ".claude" / "projects"
    return projects.is_dir() and any(projects.glob(f"*/{session_id}.jsonl"))


def _smaller(a: int | None, b: int | None) -> int | None:
    return min(a, b) if a is not None and b is not None else (a if a is not None else b)


def _remaining_budget(budget: float | None, spent: float) -> float | None:
    if budget is None:
        return None
    return max(0.01, budget - spent)
