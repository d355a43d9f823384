"""Where a run's processes run and what they find there: its box, its setup, its tests.

:func:`open_box` starts the run's sandbox and gateway (or says loudly that the run is not
confined), :func:`set_up` prepares the test environment in the box
(:mod:`~claude_cluster.agent.provision`; a failure makes the run *untested*), and
:func:`run_test_phase` runs the tests there: once on the base commit before the agent (the
baseline, :func:`run_baseline`) and after every agent turn.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from claude_cluster.agent.provision import cache_env, plan_setup, run_setup
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.run_context import JobConfig, RunContext
from claude_cluster.agent.run_report import RunProgress
from claude_cluster.agent.runbox import RunBox
from claude_cluster.agent.sandbox import SandboxUnavailable
from claude_cluster.agent.verify import TestReport, run_tests
from claude_cluster.agent.workspace import Workspace
from claude_cluster.domain.contract import RunPolicy
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import ExecuteTaskRequest

__all__ = ["open_box", "run_baseline", "run_test_phase", "set_up"]

#: where setup finds its tools (uv beside the agent's interpreter is passed by path)
_TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"


async def open_box(
    config: JobConfig,
    request: ExecuteTaskRequest,
    reporter: RunReporter,
    ws: Workspace,
    policy: RunPolicy,
) -> RunBox:
    """The run's sandbox and gateway, or an unconfined box with ``RUN_SANDBOX=off``.

    Raises:
        RunEnded: the sandbox could not start (``sandbox_error``: the agent's, not the
            task's; requeued without a retry).
    """
    sandbox = config.sandbox
    if sandbox is None or not sandbox.enabled:
        reporter.event(
            "sandbox",
            "RUN_SANDBOX=off: this run is NOT confined (it can read the agent's files "
            "and credentials and reach the network)",
            {"sandbox": "off"},
            level="warning",
        )
        return RunBox(None, None, None, None, ca_bundle=config.ca_bundle)
    home = config.home_for(request.task_id)
    home.mkdir(parents=True, exist_ok=True)

    def on_event(kind: str, message: str, data: dict[str, Any], level: str) -> None:
        reporter.event(kind, message, data, level)

    state_dir = config.state_dir or config.homes_dir.parent / "runs"
    cache = config.env_cache(ws)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        box = await RunBox.open(
            sandbox,
            run_id=request.run_id,
            state_dir=state_dir,
            repository=ws.path,
            home=home,
            readable=(ws.mirror / "objects", *config.readable),
            gateway=config.gateway,
            allow=policy.network_allow,
            budget_usd=policy.budget_usd,
            on_event=on_event,
            writable=(cache,),
            ca_bundle=config.ca_bundle,
        )
    except (SandboxUnavailable, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise
        # the agent's sandbox or gateway, not the task: requeued without a retry
        message = f"the run's sandbox could not start: {exc}"
        reporter.event("sandbox", message, {"error": str(exc)}, level="error")
        raise RunProgress().failed(ErrorCategory.SANDBOX_ERROR, message) from None
    reporter.event(
        "sandbox",
        "the run is confined (bubblewrap; network only through the agent's gateway)",
        {"sandbox": "on"},
    )
    return box


async def set_up(ctx: RunContext) -> None:
    """Set up the test environment in the box; a failure makes the run untested."""
    ws, reporter = ctx.ws, ctx.reporter
    plan = plan_setup(ws.path, ctx.policy, cache_dir=ctx.config.env_cache(ws))
    if not plan.steps and not plan.missing:
        return
    reporter.event(
        "phase",
        f"setting up the test environment ({plan.source})",
        {"phase": "setup", "steps": [step.name for step in plan.steps]},
    )
    env = {"PATH": _TOOL_PATH, "HOME": str(ctx.home), "LANG": "C.UTF-8", **ctx.box.tool_env()}
    report = await run_setup(plan, ctx.box.run, cwd=ws.path, env=env)
    for step in report.steps:
        reporter.event(
            "setup",
            f"{step.name}: exit {step.exit_code} in {step.duration:.1f}s",
            {"step": step.name, "exit_code": step.exit_code, "output_tail": step.output_tail},
            level="info" if step.exit_code == 0 else "warning",
        )
    if not report.ok:
        ctx.progress.untested = f"setup failed: {report.reason}"
        reporter.event("untested", ctx.progress.untested, {}, level="warning")


async def run_baseline(ctx: RunContext) -> TestReport | None:
    """The tests on the base commit, before the agent, unless the contract turns them off
    or setup failed. Either way a ``baseline`` event says what happened: the counts (as
    :func:`run_test_phase` reports them), or ``ran: false`` with ``status`` ``skipped``
    (the contract) or ``untested`` (setup failed), for the issue's progress comment."""
    if ctx.progress.untested is not None:
        ctx.reporter.event(
            "baseline",
            f"no baseline: the tests cannot run ({ctx.progress.untested})",
            {"ran": False, "status": "untested"},
        )
        return None
    if not ctx.policy.baseline:
        ctx.reporter.event(
            "baseline",
            "baseline skipped: the repository's contract turns it off",
            {"ran": False, "status": "skipped"},
        )
        return None
    return await run_test_phase(ctx, kind="baseline")


async def run_test_phase(ctx: RunContext, *, kind: str = "tests") -> TestReport:
    """Run the tests; ``kind`` ``baseline`` is the run on the base commit, before the agent."""
    reporter, box = ctx.reporter, ctx.box
    remaining = max(1.0, ctx.deadline - asyncio.get_running_loop().time())
    if kind == "baseline":
        reporter.event("phase", "running the tests on the base commit", {"phase": "baseline"})
    else:
        reporter.event("phase", "running the tests", {"phase": "tests"})
    report = await run_tests(
        ctx.ws.path,
        command=ctx.policy.test,
        timeout=min(ctx.config.test_timeout, remaining),
        env={**cache_env(ctx.config.env_cache(ctx.ws)), **box.tool_env()},
        wrap=box.wrap if box.confined else None,
    )
    reporter.event(
        kind,
        report.summary,
        {
            "ran": True,
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
