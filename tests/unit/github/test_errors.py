"""Turning GitHub's error answers into typed errors."""

from __future__ import annotations

import httpx
import pytest

from claude_cluster.errors import ClusterError
from claude_cluster.github import (
    GitHubAuthError,
    GitHubForbidden,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubUnavailable,
    GitHubValidationError,
    NoCommitsBetween,
    PullRequestExists,
)
from claude_cluster.github.errors import error_for_response

NOW = 1_767_880_000.0


def err(status: int, message: str = "", headers: dict[str, str] | None = None, **body):
    return error_for_response(
        status, httpx.Headers(headers or {}), {"message": message, **body}, now=NOW
    )


def test_bad_credentials() -> None:
    error = err(401, "Bad credentials")
    assert isinstance(error, GitHubAuthError) and isinstance(error, ClusterError)
    assert not error.retryable and error.status == 401


def test_primary_rate_limit_waits_for_the_reset() -> None:
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 120)}
    error = err(403, "API rate limit exceeded for user ID 1.", headers)
    assert isinstance(error, GitHubRateLimited) and error.retryable
    assert error.retry_after == 121 and not error.secondary
    assert str(error) == "GitHub rate limit hit; retry in 121 s."


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [
        (403, {"retry-after": "30"}, 30),
        (403, {}, 60),  # no Retry-After: GitHub says wait at least a minute
        (429, {"retry-after": "5"}, 5),
    ],
)
def test_secondary_rate_limit(status: int, headers: dict[str, str], wait: int) -> None:
    error = err(status, "You have exceeded a secondary rate limit. Please wait.", headers)
    assert isinstance(error, GitHubRateLimited)
    assert error.secondary and error.retry_after == wait


def test_plain_403_is_forbidden() -> None:
    error = err(403, "Resource not accessible by integration", {"x-ratelimit-remaining": "4000"})
    assert isinstance(error, GitHubForbidden)
    assert "Resource not accessible by integration" in str(error)


def test_not_found_and_gone() -> None:
    assert isinstance(err(404, "Not Found"), GitHubNotFound)
    assert isinstance(err(410, "Issues are disabled"), GitHubNotFound)


def test_the_422s_by_name() -> None:
    exists = err(
        422, "Validation Failed", errors=[{"message": "A pull request already exists for o:b."}]
    )
    assert isinstance(exists, PullRequestExists)
    empty = err(422, "Validation Failed", errors=[{"message": "No commits between main and b"}])
    assert isinstance(empty, NoCommitsBetween) and isinstance(empty, GitHubValidationError)
    assert "No commits between main and b" in str(empty)
    other = err(422, "Validation Failed", errors=[{"field": "title", "code": "missing_field"}])
    assert type(other) is GitHubValidationError


def test_server_errors_are_retryable() -> None:
    error = error_for_response(502, httpx.Headers(), "<html>Bad gateway</html>", now=NOW)
    assert isinstance(error, GitHubUnavailable) and error.retryable
