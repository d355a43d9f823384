"""When a failed run's task goes back to the queue, and when it gives up."""

from __future__ import annotations

from dataclasses import dataclass

from claude_cluster.domain.states import ErrorCategory, is_retryable


def backoff_seconds(retry_number: int, *, base: float = 10.0, cap: float = 300.0) -> float:
    """``base·2^(n-1)`` capped at ``cap``; ``retry_number`` starts at 1."""
    return float(min(cap, base * (2 ** max(0, retry_number - 1))))


@dataclass(frozen=True)
class RetryPolicy:
    """How many retries a task gets and how long each waits (``TASK_RETRY_ATTEMPTS``,
    ``RETRY_BASE_SECONDS``, ``RETRY_MAX_SECONDS``)."""

    max_retries: int = 3
    base_seconds: float = 10.0
    cap_seconds: float = 300.0

    def decide(
        self, category: ErrorCategory | None, *, retries_so_far: int, retry_after: float | None
    ) -> RetryDecision:
        return decide(
            category,
            retries_so_far=retries_so_far,
            max_retries=self.max_retries,
            retry_after=retry_after,
            base=self.base_seconds,
            cap=self.cap_seconds,
        )


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float = 0.0
    reason: str = ""


def decide(
    category: ErrorCategory | None,
    *,
    retries_so_far: int,
    max_retries: int,
    retry_after: float | None = None,
    base: float = 10.0,
    cap: float = 300.0,
) -> RetryDecision:
    """Retry retryable outcomes while fewer than ``max_retries`` retries were made.

    The delay is the back-off for this retry, or the server's ``retry_after`` when that is
    longer (a rate-limit reset known from the CLI)."""
    if category is None or not is_retryable(category):
        return RetryDecision(False, reason=f"{category} is not retryable")
    if retries_so_far >= max_retries:
        return RetryDecision(False, reason=f"gave up after {retries_so_far} retries")
    delay = backoff_seconds(retries_so_far + 1, base=base, cap=cap)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return RetryDecision(True, delay_seconds=delay, reason=f"retry {retries_so_far + 1}")
