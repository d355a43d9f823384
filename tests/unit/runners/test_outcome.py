"""Classifying Claude runs: recorded result lines, exit codes and watchdog reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_cluster.domain.states import ErrorCategory
from claude_cluster.process import ProcessExit, StopReason
from claude_cluster.runners.claude_stream import StreamSummary, parse_line
from claude_cluster.runners.outcome import classify_claude, claude_outcome

FIXTURES = Path(__file__).parents[2] / "fixtures" / "stream-json"


def summary_of(*lines: str) -> StreamSummary:
    summary = StreamSummary()
    for line in lines:
        for event in parse_line(line):
            summary.add(event)
    return summary


def recorded(name: str) -> StreamSummary:
    return summary_of(*(FIXTURES / f"{name}.jsonl").read_text().splitlines())


def exited(
    code: int | None, reason: StopReason = StopReason.EXITED, stderr: str = ""
) -> ProcessExit:
    return ProcessExit(exit_code=code, stop_reason=reason, stderr_tail=stderr, duration=1.0)


def result_line(**fields: object) -> str:
    return json.dumps({"type": "result", "subtype": "success", "is_error": False, **fields})


@pytest.mark.parametrize(
    ("fixture", "exit_code", "category"),
    [
        ("write-edit", 0, None),
        ("bash-denied", 0, None),
        ("rate-limit-once", 0, None),
        ("max-turns", 1, ErrorCategory.MAX_TURNS),
        ("budget", 1, ErrorCategory.BUDGET_EXCEEDED),
        ("rate-limited", 1, ErrorCategory.RATE_LIMITED),
        ("rate-limited-unified", 1, ErrorCategory.RATE_LIMITED),
        ("rate-limited-oauth", 1, ErrorCategory.RATE_LIMITED),
        ("overloaded", 1, ErrorCategory.OVERLOADED),
        ("unauthorized", 1, ErrorCategory.AUTH_ERROR),
    ],
)
def test_recorded_runs(fixture: str, exit_code: int, category: ErrorCategory | None) -> None:
    assert classify_claude(recorded(fixture), exited(exit_code)).category is category


def test_the_outcome_takes_cost_usage_and_denials_from_the_result() -> None:
    outcome = claude_outcome(recorded("bash-denied"), exited(0))
    assert outcome.succeeded and outcome.error_category is None
    assert outcome.message == "Done."
    assert outcome.cost_usd == pytest.approx(0.0016)
    assert (outcome.input_tokens, outcome.output_tokens, outcome.num_turns) == (200, 40, 2)
    assert outcome.permission_denials[0]["tool_name"] == "Bash"
    assert outcome.session_id and outcome.exit_code == 0


def test_a_subscription_rate_limit_gives_the_time_to_reset() -> None:
    summary = recorded("rate-limited-oauth")
    assert summary.rate_limit and summary.rate_limit.resets_at
    verdict = classify_claude(summary, exited(1), now=summary.rate_limit.resets_at - 120)
    assert verdict.retry_after_seconds == pytest.approx(120)
    # a reset in the past means "now"
    later = classify_claude(summary, exited(1), now=summary.rate_limit.resets_at + 5)
    assert later.retry_after_seconds == 0


def test_a_rate_limit_after_retries_gives_the_last_retry_delay() -> None:
    retry = json.dumps(
        {"type": "system", "subtype": "api_retry", "retry_delay_ms": 7200, "error_status": 429}
    )
    summary = summary_of(retry, result_line(is_error=True, api_error_status=429))
    assert classify_claude(summary, exited(1)).retry_after_seconds == pytest.approx(7.2)


def test_an_api_key_rate_limit_without_retries_has_no_delay() -> None:
    assert classify_claude(recorded("rate-limited"), exited(1)).retry_after_seconds is None


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        (StopReason.EXITED, ErrorCategory.CRASH),
        (StopReason.IDLE_TIMEOUT, ErrorCategory.STALL),
        (StopReason.WALL_TIMEOUT, ErrorCategory.TIMEOUT),
    ],
)
def test_no_result_line(reason: StopReason, category: ErrorCategory) -> None:
    summary = summary_of('{"type":"system","subtype":"init","session_id":"s1"}')
    verdict = classify_claude(summary, exited(-15, reason))
    assert verdict.category is category
    assert claude_outcome(summary, exited(-15, reason)).session_id == "s1"


def test_no_result_line_is_a_crash_even_with_exit_zero() -> None:
    verdict = classify_claude(StreamSummary(), exited(0, stderr="warming up\nsegfault in foo\n"))
    assert verdict.category is ErrorCategory.CRASH
    assert "exited with 0" in verdict.message and "segfault in foo" in verdict.message


def test_a_result_kept_when_we_killed_the_cli_after_it() -> None:
    summary = summary_of(result_line(result="Done."))
    verdict = classify_claude(summary, exited(-15, StopReason.AFTER_TERMINAL))
    assert verdict.category is None and verdict.message == "Done."
    # even if the wall clock ran out while it hung there
    assert classify_claude(summary, exited(-9, StopReason.WALL_TIMEOUT)).category is None


def test_success_with_a_failing_exit_code_is_an_execution_error() -> None:
    verdict = classify_claude(summary_of(result_line(result="Done.")), exited(1))
    assert verdict.category is ErrorCategory.EXECUTION_ERROR


@pytest.mark.parametrize(
    ("fields", "category"),
    [
        ({"is_error": True, "api_error_status": 403}, ErrorCategory.AUTH_ERROR),
        ({"is_error": True, "api_error_status": 500}, ErrorCategory.OVERLOADED),
        ({"is_error": True, "api_error_status": 503}, ErrorCategory.OVERLOADED),
        # unreachable or timed-out API: no status, but an API error all the same
        ({"is_error": True, "terminal_reason": "api_error"}, ErrorCategory.OVERLOADED),
        (
            {"is_error": True, "api_error_status": 400, "terminal_reason": "prompt_too_long"},
            ErrorCategory.EXECUTION_ERROR,
        ),
        ({"subtype": "error_during_execution", "is_error": True}, ErrorCategory.EXECUTION_ERROR),
        # the reports disagree on is_error for a budget stop; the subtype decides
        ({"subtype": "error_max_budget_usd", "is_error": False}, ErrorCategory.BUDGET_EXCEEDED),
        ({"subtype": "error_max_turns", "is_error": True}, ErrorCategory.MAX_TURNS),
        # subtype "success" but is_error: never a success
        ({"is_error": True}, ErrorCategory.EXECUTION_ERROR),
    ],
)
def test_result_line_variants(fields: dict[str, object], category: ErrorCategory) -> None:
    assert classify_claude(summary_of(result_line(**fields)), exited(1)).category is category


def test_the_synthetic_error_message_decides_when_the_status_is_missing() -> None:
    # Older CLIs (before api_error_status) only had the synthetic message's error kind.
    synthetic = json.dumps(
        {
            "type": "assistant",
            "error": "authentication_failed",
            "message": {"model": "<synthetic>", "content": [{"type": "text", "text": "403"}]},
        }
    )
    summary = summary_of(synthetic, result_line(is_error=True))
    assert classify_claude(summary, exited(1)).category is ErrorCategory.AUTH_ERROR
