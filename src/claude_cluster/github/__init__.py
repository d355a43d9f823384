"""GitHub: the only package of the project that talks to GitHub.

It owns the credentials (:mod:`.auth`: a personal token or a GitHub App's short-lived
installation tokens), the REST calls (:mod:`.client`), webhook verification and parsing
(:mod:`.webhooks`), which repositories are watched and what triggers a task (:mod:`.repos`),
what the cluster writes on GitHub (:mod:`.pr`), and the polling fallback (:mod:`.poller`).
It knows nothing of tasks, the database or metrics: the coordinator wires those in
(``on_api_call`` for metrics, ``on_issue`` for the poller).
"""

from claude_cluster.github._rest import OnApiCall, RateLimit
from claude_cluster.github.auth import GitHubApp, PersonalToken, TokenProvider, token_provider
from claude_cluster.github.client import (
    GitHubClient,
    IssueDetails,
    IssueListing,
    PullRequestResult,
)
from claude_cluster.github.errors import (
    GitHubAuthError,
    GitHubError,
    GitHubForbidden,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubUnavailable,
    GitHubValidationError,
    InvalidSignature,
    MalformedPayload,
    MissingSignature,
    NoCommitsBetween,
    PullRequestExists,
    WebhookError,
)
from claude_cluster.github.models import (
    Issue,
    IssueComment,
    Label,
    PullRequest,
    Repository,
    Review,
    User,
)
from claude_cluster.github.poller import IssuePoller, PollReport
from claude_cluster.github.pr import (
    PullRequestInfo,
    TestResults,
    Usage,
    pr_title,
    render_completed_comment,
    render_pr_body,
)
from claude_cluster.github.progress import Baseline, Progress, render_progress
from claude_cluster.github.repos import (
    ASSIGNED_LABEL,
    DEFAULT_EXCLUSION_LABELS,
    DEFAULT_TRIGGER_LABELS,
    Decision,
    RepositoryConfig,
    RepositoryConfigs,
    has_trigger_label,
    load_repositories,
    parse_repository_names,
    should_trigger,
)
from claude_cluster.github.webhooks import (
    GitHubEvent,
    IssueCommentEvent,
    IssuesEvent,
    PingEvent,
    PullRequestEvent,
    PullRequestReviewEvent,
    UnhandledEvent,
    mentions,
    parse_event,
    sign,
    verify_signature,
)

__all__ = [
    "ASSIGNED_LABEL",
    "DEFAULT_EXCLUSION_LABELS",
    "DEFAULT_TRIGGER_LABELS",
    "Baseline",
    "Decision",
    "GitHubApp",
    "GitHubAuthError",
    "GitHubClient",
    "GitHubError",
    "GitHubEvent",
    "GitHubForbidden",
    "GitHubNotFound",
    "GitHubRateLimited",
    "GitHubUnavailable",
    "GitHubValidationError",
    "InvalidSignature",
    "Issue",
    "IssueComment",
    "IssueCommentEvent",
    "IssueDetails",
    "IssueListing",
    "IssuePoller",
    "IssuesEvent",
    "Label",
    "MalformedPayload",
    "MissingSignature",
    "NoCommitsBetween",
    "OnApiCall",
    "PersonalToken",
    "PingEvent",
    "PollReport",
    "Progress",
    "PullRequest",
    "PullRequestEvent",
    "PullRequestExists",
    "PullRequestInfo",
    "PullRequestResult",
    "PullRequestReviewEvent",
    "RateLimit",
    "Repository",
    "RepositoryConfig",
    "RepositoryConfigs",
    "Review",
    "TestResults",
    "TokenProvider",
    "UnhandledEvent",
    "Usage",
    "User",
    "WebhookError",
    "has_trigger_label",
    "load_repositories",
    "mentions",
    "parse_event",
    "parse_repository_names",
    "pr_title",
    "render_completed_comment",
    "render_pr_body",
    "render_progress",
    "should_trigger",
    "sign",
    "token_provider",
    "verify_signature",
]
