"""Errors of the GitHub package. Each docstring doubles as the default message.

    ClusterError
    ├── GitHubError                  a GitHub API call failed
    │   ├── GitHubAuthError          401: bad or expired credentials (unrecoverable)
    │   ├── GitHubForbidden          403 that is not a rate limit: missing permission
    │   ├── GitHubNotFound           404/410: the repository, issue or PR is not visible
    │   ├── GitHubRateLimited        403/429 with remaining 0 or a secondary limit (retryable)
    │   ├── GitHubValidationError    422
    │   │   ├── PullRequestExists    "A pull request already exists for owner:branch."
    │   │   └── NoCommitsBetween     "No commits between main and feature"
    │   └── GitHubUnavailable        5xx or no answer at all (retryable)
    └── WebhookError                 a webhook delivery must be refused
        ├── MissingSignature         no X-Hub-Signature-256 header (API: 400)
        ├── InvalidSignature         the signature does not match the body (API: 401)
        └── MalformedPayload         not JSON, or a handled event lacks its fields (API: 400)

``retryable`` tells a caller whether trying again later can succeed; ``category`` is a
stable string for logs and task failure reasons. :func:`error_for_response` is the one
place that turns an HTTP answer into one of these.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from claude_cluster.errors import ClusterError

#: GitHub asks for at least a minute when a secondary limit comes without Retry-After
SECONDARY_LIMIT_DEFAULT_WAIT = 60.0


class GitHubError(ClusterError):
    """GitHub answered {status}: {detail}"""

    retryable: ClassVar[bool] = False
    category: ClassVar[str] = "github_error"

    def __init__(self, message: str | None = None, *, status: int = 0, **context: Any) -> None:
        self.status = status
        context.setdefault("detail", message or "")
        super().__init__(message, status=status, **context)


class GitHubAuthError(GitHubError):
    """GitHub refused the credentials (401 Bad credentials)."""

    category = "github_auth"


class GitHubForbidden(GitHubError):
    """GitHub refused the request (403): {detail}"""

    category = "github_forbidden"


class GitHubNotFound(GitHubError):
    """Not found on GitHub (or not visible to this token)."""

    category = "github_not_found"


class GitHubRateLimited(GitHubError):
    """GitHub rate limit hit; retry in {retry_after:.0f} s."""

    retryable = True
    category = "github_rate_limited"

    def __init__(
        self, message: str | None = None, *, retry_after: float, secondary: bool = False, **kw: Any
    ) -> None:
        self.retry_after = retry_after
        self.secondary = secondary
        super().__init__(message, retry_after=retry_after, **kw)


class GitHubValidationError(GitHubError):
    """GitHub rejected the request (422): {detail}"""

    category = "github_validation"


class PullRequestExists(GitHubValidationError):
    """A pull request already exists for this branch."""


class NoCommitsBetween(GitHubValidationError):
    """The branch has no commits over its base: nothing to open a pull request for."""

    category = "github_no_commits"


class GitHubUnavailable(GitHubError):
    """GitHub is unavailable: {detail}"""

    retryable = True
    category = "github_unavailable"


class WebhookError(ClusterError):
    """The webhook delivery was refused."""


class MissingSignature(WebhookError):
    """The delivery has no X-Hub-Signature-256 header."""


class InvalidSignature(WebhookError):
    """The delivery's signature does not match its body."""


class MalformedPayload(WebhookError):
    """The delivery's body is not a valid {event} payload: {detail}"""


def _messages(body: object) -> list[str]:
    """The top-level message plus each ``errors[].message`` of a GitHub error body."""
    if not isinstance(body, Mapping):
        return []
    found = [str(body.get("message") or "")]
    for item in body.get("errors") or []:
        if isinstance(item, Mapping) and item.get("message"):
            found.append(str(item["message"]))
    return [m for m in found if m]


def error_for_response(
    status: int, headers: Mapping[str, str], body: object, *, now: float | None = None
) -> GitHubError:
    """Build the typed error for a non-2xx GitHub answer.

    Args:
        status: the HTTP status code.
        headers: the response headers (case-insensitive mapping, e.g. ``httpx.Headers``).
        body: the decoded JSON body, or anything else when it was not JSON.
        now: the current epoch time, for computing a wait from ``X-RateLimit-Reset``.
    """
    messages = _messages(body)
    detail = "; ".join(messages) or f"HTTP {status}"
    if status == 401:
        return GitHubAuthError(status=status)
    if status in (403, 429):
        limited = _rate_limit_wait(status, headers, detail, time.time() if now is None else now)
        if limited is not None:
            return limited
        return GitHubForbidden(status=status, detail=detail)
    if status in (404, 410):
        return GitHubNotFound(status=status)
    if status == 422:
        joined = " ".join(messages)
        if "A pull request already exists" in joined:
            return PullRequestExists(detail, status=status)
        if "No commits between" in joined:
            return NoCommitsBetween(detail, status=status)
        return GitHubValidationError(status=status, detail=detail)
    if status >= 500:
        return GitHubUnavailable(status=status, detail=detail)
    return GitHubError(status=status, detail=detail)


def _rate_limit_wait(
    status: int, headers: Mapping[str, str], detail: str, now: float
) -> GitHubRateLimited | None:
    """The rate-limit error a 403/429 stands for, or None for a plain permission 403."""
    retry_after = headers.get("retry-after")
    if headers.get("x-ratelimit-remaining") == "0" and retry_after is None:
        reset = float(headers.get("x-ratelimit-reset") or now + SECONDARY_LIMIT_DEFAULT_WAIT)
        # +1 s: the reset second itself may still be inside the exhausted window
        wait = max(1.0, reset - now + 1)
        return GitHubRateLimited(status=status, retry_after=wait, detail=detail)
    secondary = "secondary rate limit" in detail.lower()
    if retry_after is not None or secondary or status == 429:
        wait = float(retry_after) if retry_after else SECONDARY_LIMIT_DEFAULT_WAIT
        return GitHubRateLimited(status=status, retry_after=wait, secondary=True, detail=detail)
    return None
