"""The ``claude`` runner driving the real Claude Code CLI against the fake Anthropic API."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from claude_cluster.domain.states import ErrorCategory, is_retryable
from claude_cluster.runners.base import EventKind
from claude_cluster.runners.claude_code import ClaudeCodeRunner
from tests.fakes.anthropic_api import (
    FakeAnthropic,
    bash,
    edit,
    overloaded,
    rate_limited,
    stall,
    text,
    tool_use,
    unauthorized,
    write,
)
from tests.integration.runners.harness import CALC_BUGGY, ClaudeRun, repo_tests_pass

pytestmark = pytest.mark.claude

NO_RETRIES = {"CLAUDE_CODE_MAX_RETRIES": "0"}


async def test_claude_fixes_a_failing_test(
    fake_api: FakeAnthropic, run_claude: ClaudeRun, repo: Path
) -> None:
    assert not repo_tests_pass(repo)
    scenario = fake_api.scenario(
        [
            tool_use("Read", {"file_path": "calc.py"}, say="Let me look at calc.py."),
            edit("calc.py", "return a - b", "return a + b"),
            bash(f"{sys.executable} -m pytest -q -p no:cacheprovider"),
            text("Fixed: add() subtracted instead of adding."),
        ]
    )

    outcome, events = await run_claude(scenario)

    assert outcome.succeeded, outcome.message
    assert outcome.error_category is None
    assert outcome.message == "Fixed: add() subtracted instead of adding."
    assert repo_tests_pass(repo)
    assert (repo / "calc.py").read_text() == CALC_BUGGY.replace("a - b", "a + b")
    # cost, usage and turns come from the result line: 4 calls of 100 in / 20 out tokens
    assert (outcome.input_tokens, outcome.output_tokens, outcome.num_turns) == (400, 80, 4)
    assert outcome.cost_usd > 0
    assert outcome.exit_code == 0
    assert outcome.session_id == scenario.requests[0].session_id
    assert [e.message for e in events.of(EventKind.TOOL_USE)] == ["Read", "Edit", "Bash"]
    bash_result = events.of(EventKind.TOOL_RESULT)[-1]
    assert "1 passed" in bash_result.message
    assert events.kinds()[0] == EventKind.SESSION_STARTED
    assert events.kinds()[-1] == EventKind.RESULT


async def test_resume_continues_the_same_session(
    fake_api: FakeAnthropic, run_claude: ClaudeRun
) -> None:
    first = fake_api.scenario([write("notes.txt", "round one\n"), text("Round one done.")])
    outcome_one, _ = await run_claude(first, prompt="Start the notes.")
    assert outcome_one.succeeded and outcome_one.session_id

    second = fake_api.scenario([text("Round two done.")])
    outcome_two, _ = await run_claude(
        second, prompt="The tests still fail: fix it.", resume_session_id=outcome_one.session_id
    )

    assert outcome_two.succeeded, outcome_two.message
    assert outcome_two.session_id == outcome_one.session_id
    request = second.requests[0]
    assert request.session_id == outcome_one.session_id
    texts = request.texts()
    # the prior conversation travels with the new prompt
    assert (
        texts.index("Start the notes.")
        < texts.index("Round one done.")
        < texts.index("The tests still fail: fix it.")
    )


async def test_max_turns(fake_api: FakeAnthropic, run_claude: ClaudeRun, repo: Path) -> None:
    scenario = fake_api.scenario([write("hello.txt", "hi\n"), text("Done.")])
    outcome, _ = await run_claude(scenario, max_turns=1)
    assert outcome.error_category is ErrorCategory.MAX_TURNS
    assert "maximum number of turns" in outcome.message
    assert outcome.exit_code == 1
    assert (repo / "hello.txt").exists()  # the tool of the last allowed turn still ran


async def test_budget_exceeded(fake_api: FakeAnthropic, run_claude: ClaudeRun) -> None:
    expensive = write("a.txt", "a\n", input_tokens=200_000, output_tokens=50_000)
    scenario = fake_api.scenario([expensive, write("b.txt", "b\n"), text("Done.")])
    outcome, _ = await run_claude(scenario, budget_usd=0.01)
    assert outcome.error_category is ErrorCategory.BUDGET_EXCEEDED
    assert outcome.cost_usd > 0.01


async def test_rate_limited_with_retry_delay(
    fake_api: FakeAnthropic, run_claude: ClaudeRun
) -> None:
    scenario = fake_api.scenario([rate_limited(retry_after=1)])
    outcome, events = await run_claude(scenario, env={"CLAUDE_CODE_MAX_RETRIES": "1"})
    assert outcome.error_category is ErrorCategory.RATE_LIMITED
    assert is_retryable(outcome.error_category)
    assert "429" in outcome.message
    # the CLI honoured retry-after once and told us its delay
    assert [e.data["error_status"] for e in events.of(EventKind.API_RETRY)] == [429]
    assert outcome.retry_after_seconds == pytest.approx(1.0, abs=0.5)
    assert len(scenario.requests) == 2


async def test_rate_limited_subscription_reports_the_reset_time(
    fake_api: FakeAnthropic, run_claude: ClaudeRun
) -> None:
    resets_at = int(time.time()) + 3600
    scenario = fake_api.scenario([rate_limited(retry_after=30, resets_at=resets_at)])
    # Only a subscription login (OAuth token) gets the reset time from the CLI.
    outcome, events = await run_claude(scenario, oauth=True, env=NO_RETRIES)
    assert outcome.error_category is ErrorCategory.RATE_LIMITED
    assert events.of(EventKind.RATE_LIMIT)[0].data["resets_at"] == resets_at
    assert outcome.retry_after_seconds == pytest.approx(3600, abs=30)


async def test_overloaded(fake_api: FakeAnthropic, run_claude: ClaudeRun) -> None:
    outcome, _ = await run_claude(fake_api.scenario([overloaded()]), env=NO_RETRIES)
    assert outcome.error_category is ErrorCategory.OVERLOADED
    assert is_retryable(outcome.error_category)
    assert "529" in outcome.message


async def test_auth_error_is_not_retryable(fake_api: FakeAnthropic, run_claude: ClaudeRun) -> None:
    outcome, events = await run_claude(fake_api.scenario([unauthorized()]), env=NO_RETRIES)
    assert outcome.error_category is ErrorCategory.AUTH_ERROR
    assert not is_retryable(outcome.error_category)
    assert events.of(EventKind.API_ERROR)[0].data["error"] == "authentication_failed"


async def test_stall_mid_stream_trips_the_idle_watchdog(
    fake_api: FakeAnthropic, run_claude: ClaudeRun
) -> None:
    scenario = fake_api.scenario([stall()])
    started = time.monotonic()
    outcome, events = await run_claude(scenario, idle_timeout=3.0)
    assert outcome.error_category is ErrorCategory.STALL
    assert is_retryable(outcome.error_category)
    assert events.of(EventKind.WATCHDOG)[0].data["reason"] == "idle_timeout"
    assert outcome.session_id  # known from the init line
    assert time.monotonic() - started < 10


async def test_wall_timeout(fake_api: FakeAnthropic, run_claude: ClaudeRun) -> None:
    outcome, _ = await run_claude(fake_api.scenario([stall()]), wall_timeout=2.0)
    assert outcome.error_category is ErrorCategory.TIMEOUT


async def test_hang_after_result_is_cut_short_and_the_result_kept(
    fake_api: FakeAnthropic, run_claude: ClaudeRun, claude_cli: str, tmp_path: Path
) -> None:
    # The CLI is known to hang after printing its result (anthropics/claude-code#25629).
    # Reproduce that honestly: the real CLI prints the real result, then the process keeps
    # stdout open and never exits.
    wrapper = tmp_path / "claude-that-hangs"
    wrapper.write_text(f'#!/bin/sh\n"{claude_cli}" "$@"\nexec sleep 60\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    runner = ClaudeCodeRunner(cli_path=str(wrapper), kill_grace=1.0)
    scenario = fake_api.scenario([write("hello.txt", "hi\n"), text("Done.")])

    started = time.monotonic()
    outcome, events = await run_claude(scenario, runner=runner, result_grace=1.0)

    assert outcome.succeeded, outcome.message
    assert outcome.message == "Done."
    assert outcome.num_turns == 2
    assert outcome.exit_code == -15  # SIGTERM from our grace watchdog
    assert [e.data["reason"] for e in events.of(EventKind.WATCHDOG)] == ["after_terminal"]
    assert time.monotonic() - started < 10


async def test_crash_without_result_line(fake_api: FakeAnthropic, run_claude: ClaudeRun) -> None:
    # The Bash tool's shell kills the CLI itself: it dies mid-run without a result line.
    scenario = fake_api.scenario([bash("kill -9 $PPID"), text("never sent")])
    outcome, events = await run_claude(scenario)
    assert outcome.error_category is ErrorCategory.CRASH
    assert outcome.exit_code == -9
    assert "without a result line" in outcome.message
    assert EventKind.RESULT not in events.kinds()


async def test_refusal_to_start_is_a_crash_with_the_reason(
    fake_api: FakeAnthropic, run_claude: ClaudeRun
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the CLI refuses bypassPermissions only as root")
    # Overriding the runner's IS_SANDBOX shows the CLI's root guard: exit 1, stderr, no stdout.
    outcome, events = await run_claude(
        fake_api.scenario([text("never sent")]), env={"IS_SANDBOX": "0"}
    )
    assert outcome.error_category is ErrorCategory.CRASH
    assert outcome.exit_code == 1
    assert "root" in outcome.message
    assert events.events == []


async def test_permission_denials_are_recorded(
    fake_api: FakeAnthropic, claude_cli: str, run_claude: ClaudeRun, repo: Path
) -> None:
    runner = ClaudeCodeRunner(cli_path=claude_cli, permission_mode="default")
    scenario = fake_api.scenario([bash("echo hi > hi.txt"), text("Done.")])
    outcome, events = await run_claude(scenario, runner=runner)
    # the CLI calls this a success (exit 0); only the denial list shows the tool never ran
    assert outcome.succeeded
    assert [d["tool_name"] for d in outcome.permission_denials] == ["Bash"]
    assert not (repo / "hi.txt").exists()
    assert events.of(EventKind.PERMISSION_DENIED)


async def test_cancelling_the_run_stops_the_cli(
    fake_api: FakeAnthropic, run_claude: ClaudeRun
) -> None:
    scenario = fake_api.scenario([stall()])
    task = asyncio.create_task(run_claude(scenario))
    while not scenario.requests:  # the CLI is up and waiting on the stalled stream
        await asyncio.sleep(0.05)
    pids = _claude_pids(run_claude.home)
    assert pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(_alive(pid) for pid in pids)


async def test_scrubbed_environment(
    fake_api: FakeAnthropic, run_claude: ClaudeRun, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-leaked-from-the-agent")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_leaked")
    monkeypatch.setenv("CLAUDECODE", "1")
    scenario = fake_api.scenario([bash("env > env.txt"), text("Done.")])
    outcome, _ = await run_claude(scenario, env={"TASK_ID": "42"})
    assert outcome.succeeded, outcome.message
    child_env = dict(
        line.split("=", 1) for line in (repo / "env.txt").read_text().splitlines() if "=" in line
    )
    assert child_env["TASK_ID"] == "42"
    assert child_env["HOME"] == str(run_claude.home)
    assert "GITHUB_TOKEN" not in child_env
    # the spec's key, not the agent's (the CLI sets CLAUDECODE for its tools itself)
    assert child_env["ANTHROPIC_API_KEY"] == "sk-test-fake"
    assert scenario.requests[0].headers["x-api-key"] == "sk-test-fake"


async def test_missing_cli_is_a_runner_error(
    run_claude: ClaudeRun, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    runner = ClaudeCodeRunner(cli_path=str(tmp_path / "no-such-claude"))
    outcome, events = await run_claude(fake_api.scenario([text("x")]), runner=runner)
    assert outcome.error_category is ErrorCategory.RUNNER_ERROR
    assert "no-such-claude" in outcome.message
    assert events.events == []


def _claude_pids(home: Path) -> list[int]:
    """Processes whose environment has this run's HOME: the CLI and its children."""
    needle = f"HOME={home}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
