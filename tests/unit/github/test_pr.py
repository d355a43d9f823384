"""Pull request and comment text: the real numbers, and task ids read back safely."""

from __future__ import annotations

from claude_cluster.github import (
    PullRequestInfo,
    TestResults,
    Usage,
    pr_title,
    render_completed_comment,
    render_pr_body,
)
from claude_cluster.github.pr import TITLE_MAX

TESTS = TestResults(
    command="uv run pytest -q",
    passed=41,
    failed=2,
    skipped=3,
    duration_seconds=12.34,
    output_tail="FAILED tests/test_cfg.py::test_empty - KeyError\n2 failed, 41 passed",
)
USAGE = Usage(
    cost_usd=0.4321,
    input_tokens=12345,
    output_tokens=2345,
    cache_read_tokens=1000,
    cache_creation_tokens=50,
)
INFO = PullRequestInfo(
    task_id=42,
    issue_number=17,
    issue_title="Crash on empty config",
    summary="Handle an empty config file.",
    changes=["src/app/config.py", "tests/test_cfg.py"],
    tests=TESTS,
    agent="agent-03",
    model="claude-sonnet-4-5",
    attempt=2,
    branch="claude/issue-17-crash",
    usage=USAGE,
    duration_seconds=321,
)


def test_body_has_the_sections_in_order() -> None:
    body = render_pr_body(INFO)
    headings = [line for line in body.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Summary",
        "## Changes",
        "## Task Information",
        "## Test Results",
        "## Agent",
        "## Cost",
    ]
    assert "- src/app/config.py\n- tests/test_cfg.py" in body
    assert "- Attempt: 2" in body and "- Branch: `claude/issue-17-crash`" in body
    assert "- Agent: agent-03\n- Model: claude-sonnet-4-5\n- Run time: 321 s" in body
    assert body.rstrip().endswith("Closes #17\n\nTask ID: 42")


def test_body_reports_the_measured_test_results() -> None:
    body = render_pr_body(INFO)
    assert "❌ 41 passed, 2 failed, 3 skipped in 12.3 s" in body
    assert "Command: `uv run pytest -q`" in body
    assert "FAILED tests/test_cfg.py::test_empty" in body
    assert "✅" not in body


def test_green_tests_and_no_tests() -> None:
    green = TestResults(command="npm test", passed=10, failed=0)
    assert green.line() == "✅ 10 passed, 0 failed"
    empty = TestResults(command="pytest", passed=0, failed=0)
    assert empty.line() == "⚠️ 0 passed, 0 failed (no tests ran)"
    errors = TestResults(command="pytest", passed=5, failed=0, errors=1)
    assert errors.line().startswith("❌") and "1 errors" in errors.line()
    body = render_pr_body(PullRequestInfo(task_id=1, issue_number=2, issue_title="t", summary=""))
    assert "⚠️ The tests were not run." in body and "_No summary._" in body


def test_cost_in_usd_and_tokens() -> None:
    body = render_pr_body(INFO)
    assert "$0.4321 USD; 12,345 input, 2,345 output tokens (cache: 1,000 read, 50 written)" in body


def test_output_with_backticks_cannot_break_out_of_its_code_block() -> None:
    tests = TestResults(command="t", passed=1, failed=0, output_tail="```\n## Injected")
    body = render_pr_body(PullRequestInfo(1, 2, "t", "s", tests=tests))
    assert "````text\n```\n## Injected\n````" in body


def test_title_is_bounded_and_one_line() -> None:
    assert pr_title(7, "Fix\n the  bug") == "[Claude Code] Fix issue #7: Fix the bug"
    long = pr_title(7, "x" * 1000)
    assert len(long) == TITLE_MAX and long.endswith("…")


def test_the_completion_comment() -> None:
    done = render_completed_comment(42, pr_number=18)
    assert "#18 was merged" in done and done.endswith("Task ID: 42")
