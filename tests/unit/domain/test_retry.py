from __future__ import annotations

import pytest

from claude_cluster.domain.retry import backoff_seconds, decide
from claude_cluster.domain.states import ErrorCategory


def test_backoff_doubles_from_ten_seconds_capped_at_five_minutes() -> None:
    assert [backoff_seconds(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


@pytest.mark.parametrize(
    "category",
    [ErrorCategory.LOST, ErrorCategory.STALL, ErrorCategory.RATE_LIMITED, ErrorCategory.OVERLOADED],
)
def test_retryable_outcomes_retry_until_the_limit(category: ErrorCategory) -> None:
    assert decide(category, retries_so_far=0, max_retries=3).delay_seconds == 10
    assert decide(category, retries_so_far=2, max_retries=3).retry
    assert not decide(category, retries_so_far=3, max_retries=3).retry


@pytest.mark.parametrize(
    "category",
    [
        ErrorCategory.BUDGET_EXCEEDED,
        ErrorCategory.TESTS_FAILED,
        ErrorCategory.AUTH_ERROR,
        ErrorCategory.CANCELLED,
        None,
    ],
)
def test_other_outcomes_end_the_task(category: ErrorCategory | None) -> None:
    assert not decide(category, retries_so_far=0, max_retries=3).retry


def test_a_known_rate_limit_reset_wins_when_later() -> None:
    assert (
        decide(
            ErrorCategory.RATE_LIMITED, retries_so_far=0, max_retries=3, retry_after=120
        ).delay_seconds
        == 120
    )
    assert (
        decide(
            ErrorCategory.RATE_LIMITED, retries_so_far=0, max_retries=3, retry_after=1
        ).delay_seconds
        == 10
    )


def test_the_policy_applies_its_settings_to_the_rule() -> None:
    from claude_cluster.domain.retry import RetryPolicy

    policy = RetryPolicy(max_retries=2, base_seconds=1.0, cap_seconds=3.0)
    assert policy.decide(ErrorCategory.LOST, retries_so_far=0, retry_after=None).delay_seconds == 1
    assert policy.decide(ErrorCategory.LOST, retries_so_far=1, retry_after=None).delay_seconds == 2
    assert not policy.decide(ErrorCategory.LOST, retries_so_far=2, retry_after=None).retry
    later = policy.decide(ErrorCategory.RATE_LIMITED, retries_so_far=0, retry_after=30.0)
    assert later.delay_seconds == 30
    assert not policy.decide(ErrorCategory.TESTS_FAILED, retries_so_far=0, retry_after=None).retry
