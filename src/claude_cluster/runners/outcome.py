"""Classify how a run ended, from its ``result`` line, exit code and watchdogs.

Mostly Claude Code; the helpers at the end serve the other runners too.

The Claude rules follow what the real CLI does (see the reference notes on the CLI against a
fake API):

* No ``result`` line: the wall watchdog means ``timeout``, the idle watchdog ``stall``,
  anything else ``crash``, whatever the exit code (0 included).
* With a ``result`` line, the line decides and the exit code only confirms it. API
  failures arrive as ``subtype: "success"`` with ``is_error: true``, so the subtype alone
  decides nothing; ``is_error``, ``api_error_status``, ``terminal_reason`` and the CLI's
  synthetic error message do.
* When we killed the CLI after its ``result`` line (it can hang there), the result stands.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from claude_cluster.domain.states import ErrorCategory
from claude_cluster.process import ProcessExit, StopReason
from claude_cluster.runners.base import RunnerOutcome, clip
from claude_cluster.runners.claude_stream import Result, StreamSummary

__all__ = [
    "Verdict",
    "classify_claude",
    "classify_error_text",
    "claude_outcome",
    "exit_verdict",
    "outcome_from",
    "verdict_outcome",
    "watchdog_verdict",
]

_AUTH_ERRORS = frozenset({"authentication_failed", "billing_error"})
_MESSAGE_LIMIT = 1000


@dataclass(frozen=True)
class Verdict:
    """The classification: ``category`` is ``None`` for success."""

    category: ErrorCategory | None
    message: str
    retry_after_seconds: float | None = None


def classify_claude(
    summary: StreamSummary, process: ProcessExit, *, now: float | None = None
) -> Verdict:
    """Classify a finished run.

    Args:
        summary: what the stream said (result line, API error, retries, rate limits).
        process: how the process ended (exit code, watchdog).
        now: the current epoch time, for turning a rate-limit reset into a delay.
    """
    result = summary.result
    if result is None:
        return _without_result(process)
    if result.subtype == "error_max_budget_usd" or result.terminal_reason == "budget_exhausted":
        # Observers disagree on is_error for this one; the subtype is unambiguous.
        return Verdict(ErrorCategory.BUDGET_EXCEEDED, result.description)
    if result.subtype == "error_max_turns" or result.terminal_reason == "max_turns":
        return Verdict(ErrorCategory.MAX_TURNS, result.description)
    if not result.is_error and result.subtype == "success":
        if process.exit_code == 0 or process.killed:
            return Verdict(None, result.description)
        message = f"the result says success but the CLI exited with {process.exit_code}"
        return Verdict(ErrorCategory.EXECUTION_ERROR, message)
    return _api_or_execution_error(result, summary, now)


def claude_outcome(
    summary: StreamSummary, process: ProcessExit, *, now: float | None = None
) -> RunnerOutcome:
    """The :class:`RunnerOutcome` of a Claude run: the verdict plus cost and usage."""
    return outcome_from(classify_claude(summary, process, now=now), summary, process)


def outcome_from(verdict: Verdict, summary: StreamSummary, process: ProcessExit) -> RunnerOutcome:
    """A :class:`RunnerOutcome` from a verdict, with cost and usage from the ``result`` line."""
    outcome = verdict_outcome(verdict, process, session_id=summary.session_id)
    result = summary.result
    if result is not None:
        outcome.cost_usd = result.cost_usd
        outcome.input_tokens = result.input_tokens
        outcome.output_tokens = result.output_tokens
        outcome.cache_read_tokens = result.cache_read_tokens
        outcome.cache_creation_tokens = result.cache_creation_tokens
        outcome.num_turns = result.num_turns
        outcome.permission_denials = [dict(d) for d in result.permission_denials]
    return outcome


def verdict_outcome(verdict: Verdict, process: ProcessExit, **figures: Any) -> RunnerOutcome:
    """A :class:`RunnerOutcome` from a verdict and the exit code, plus the runner's own
    ``figures`` (``RunnerOutcome`` fields: cost, tokens, turns, session id)."""
    return RunnerOutcome(
        succeeded=verdict.category is None,
        error_category=verdict.category,
        message=clip(verdict.message, _MESSAGE_LIMIT),
        retry_after_seconds=verdict.retry_after_seconds,
        exit_code=process.exit_code,
        **figures,
    )


def _without_result(process: ProcessExit) -> Verdict:
    stopped = watchdog_verdict(process)
    if stopped is not None:
        return Verdict(stopped.category, f"{stopped.message} before its result line")
    message = f"the CLI exited with {process.exit_code} without a result line"
    last_words = _last_lines(process.stderr_tail)
    return Verdict(ErrorCategory.CRASH, f"{message}: {last_words}" if last_words else message)


def _api_or_execution_error(result: Result, summary: StreamSummary, now: float | None) -> Verdict:
    status = result.api_error_status
    notice = summary.api_error.error if summary.api_error else None
    message = result.description
    if status == 429 or notice == "rate_limit":
        return Verdict(ErrorCategory.RATE_LIMITED, message, _retry_after(summary, now))
    if status in (401, 403) or notice in _AUTH_ERRORS:
        return Verdict(ErrorCategory.AUTH_ERROR, message)
    if (status is not None and status >= 500) or notice == "server_error":
        return Verdict(ErrorCategory.OVERLOADED, message)
    if result.terminal_reason == "api_error" and status is None:
        # No HTTP status: the API was unreachable or timed out after the CLI's own
        # retries. A backend problem like overload, and worth another attempt.
        return Verdict(ErrorCategory.OVERLOADED, message)
    return Verdict(ErrorCategory.EXECUTION_ERROR, message)


def _retry_after(summary: StreamSummary, now: float | None) -> float | None:
    """Seconds until the rate limit lifts, when the CLI told us.

    A subscription login reports the reset time (``rate_limit_event.resetsAt``); otherwise
    the CLI's last retry delay for a 429 honoured the server's ``retry-after``.
    """
    limit = summary.rate_limit
    if limit is not None and limit.resets_at is not None:
        return max(0.0, limit.resets_at - (time.time() if now is None else now))
    retry = summary.last_retry
    if retry is not None and retry.error_status == 429 and retry.retry_delay_ms is not None:
        return retry.retry_delay_ms / 1000
    return None


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return clip(" | ".join(lines[-count:]), 500)


_TEXT_RULES: tuple[tuple[re.Pattern[str], ErrorCategory], ...] = (
    # OpenAI answers 429 for an exhausted account too; that is no transient rate limit.
    (re.compile(r"insufficient.quota|billing", re.I), ErrorCategory.AUTH_ERROR),
    (re.compile(r"\b429\b|rate.?limit|too many requests", re.I), ErrorCategory.RATE_LIMITED),
    (
        re.compile(r"\b40[13]\b|unauthori[sz]ed|authenticat|invalid.{0,10}api.?key", re.I),
        ErrorCategory.AUTH_ERROR,
    ),
    (
        re.compile(
            r"\b5\d\d\b|overloaded|service.unavailable|internal.server.error|timed.out"
            r"|timeout|connection (error|refused|reset)|apiconnectionerror",
            re.I,
        ),
        ErrorCategory.OVERLOADED,
    ),
)


def classify_error_text(text: str) -> ErrorCategory:
    """The category of a free-text API error (codex, aider print no structured status).

    Best effort by keywords; anything unrecognised is an ``execution_error``.
    """
    for pattern, category in _TEXT_RULES:
        if pattern.search(text):
            return category
    return ErrorCategory.EXECUTION_ERROR


def watchdog_verdict(process: ProcessExit) -> Verdict | None:
    """``timeout`` or ``stall`` when a watchdog stopped a runner that had not finished."""
    if process.stop_reason is StopReason.WALL_TIMEOUT:
        return Verdict(ErrorCategory.TIMEOUT, "the run exceeded its wall time")
    if process.stop_reason is StopReason.IDLE_TIMEOUT:
        return Verdict(ErrorCategory.STALL, "the CLI stopped producing output")
    return None


def exit_verdict(process: ProcessExit, what: str = "the CLI") -> Verdict:
    """The verdict for a non-zero exit: a signal is a ``crash``, a status an error."""
    last_words = _last_lines(process.stderr_tail)
    suffix = f": {last_words}" if last_words else ""
    if process.exit_code is not None and process.exit_code < 0:
        return Verdict(
            ErrorCategory.CRASH, f"{what} was killed by signal {-process.exit_code}{suffix}"
        )
    return Verdict(ErrorCategory.EXECUTION_ERROR, f"{what} exited with {process.exit_code}{suffix}")
