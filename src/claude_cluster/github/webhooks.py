"""Webhook deliveries: signature check and typed parsing.

The API route reads the raw body, calls :func:`verify_signature` (a
:class:`~claude_cluster.github.errors.MissingSignature` answers 400, an
:class:`~claude_cluster.github.errors.InvalidSignature` 401), then :func:`parse_event`
with the ``X-GitHub-Event`` and ``X-GitHub-Delivery`` headers. The event name comes from
the header, never from guessing at payload keys. Events and actions the product does not
act on parse into :class:`UnhandledEvent` with a reason, so the route can record and
acknowledge them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any, Literal, get_args

from pydantic import ValidationError

from claude_cluster.errors import ConfigError
from claude_cluster.github.errors import InvalidSignature, MalformedPayload, MissingSignature
from claude_cluster.github.models import (
    GitHubModel,
    Hook,
    InstallationRef,
    Issue,
    IssueComment,
    Label,
    PullRequest,
    Repository,
    Review,
    User,
)

#: GitHub caps payloads at 25 MB; anything larger is not from GitHub
MAX_PAYLOAD_BYTES = 25 * 1024 * 1024
SIGNATURE_HEADER = "X-Hub-Signature-256"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """Check ``X-Hub-Signature-256`` against the HMAC-SHA256 of the raw body.

    Args:
        secret: ``GITHUB_WEBHOOK_SECRET`` as bytes.
        body: the request body exactly as received (never re-serialized JSON).
        header: the header's value, None when absent.

    Raises:
        ConfigError: the secret is empty (accepting unsigned deliveries is never intended).
        MissingSignature: no header.
        InvalidSignature: the header does not match.
    """
    if not secret:
        raise ConfigError("GITHUB_WEBHOOK_SECRET is empty: refusing to accept webhooks")
    if not header:
        raise MissingSignature()
    expected = sign(secret, body).encode()
    # compare bytes: compare_digest refuses non-ASCII str, and a header may hold anything
    if not hmac.compare_digest(expected, header.strip().encode("utf-8", "replace")):
        raise InvalidSignature()


class WebhookEvent(GitHubModel):
    """Common to every delivery."""

    event: str
    delivery_id: str
    action: str | None = None
    repository: Repository | None = None
    sender: User | None = None
    installation: InstallationRef | None = None

    @property
    def repository_name(self) -> str | None:
        return self.repository.full_name if self.repository else None


class IssuesEvent(WebhookEvent):
    event: Literal["issues"] = "issues"
    action: Literal["opened", "edited", "closed", "reopened", "labeled", "unlabeled"]
    repository: Repository
    issue: Issue
    label: Label | None = None  #: the label added or removed (labeled/unlabeled)
    changes: dict[str, Any] | None = None  #: edited: ``{"title": {"from": ...}}``


class IssueCommentEvent(WebhookEvent):
    event: Literal["issue_comment"] = "issue_comment"
    action: Literal["created"]
    repository: Repository
    issue: Issue
    comment: IssueComment

    @property
    def on_pull_request(self) -> bool:
        """A comment on a pull request arrives as an issue comment whose issue has
        ``pull_request`` set; ``issue.number`` is then the PR number."""
        return self.issue.is_pull_request


class PullRequestEvent(WebhookEvent):
    event: Literal["pull_request"] = "pull_request"
    action: Literal["opened", "closed", "synchronize", "reopened"]
    repository: Repository
    number: int
    pull_request: PullRequest
    before: str | None = None  #: synchronize: the head before the push
    after: str | None = None  #: synchronize: the head after the push

    @property
    def merged(self) -> bool:
        return self.action == "closed" and self.pull_request.merged


class PullRequestReviewEvent(WebhookEvent):
    event: Literal["pull_request_review"] = "pull_request_review"
    action: Literal["submitted"]
    repository: Repository
    review: Review
    pull_request: PullRequest

    @property
    def changes_requested(self) -> bool:
        return self.review.state == "changes_requested"


class PingEvent(WebhookEvent):
    event: Literal["ping"] = "ping"
    zen: str = ""
    hook_id: int | None = None
    hook: Hook | None = None


class UnhandledEvent(WebhookEvent):
    """A valid delivery the product does not act on; ``reason`` says why."""

    reason: str


GitHubEvent = (
    IssuesEvent
    | IssueCommentEvent
    | PullRequestEvent
    | PullRequestReviewEvent
    | PingEvent
    | UnhandledEvent
)

_MODELS: dict[str, type[WebhookEvent]] = {
    "issues": IssuesEvent,
    "issue_comment": IssueCommentEvent,
    "pull_request": PullRequestEvent,
    "pull_request_review": PullRequestReviewEvent,
    "ping": PingEvent,
}


def parse_event(event_name: str | None, delivery_id: str | None, body: bytes | str) -> GitHubEvent:
    """Parse a verified delivery into its typed event.

    Args:
        event_name: the ``X-GitHub-Event`` header.
        delivery_id: the ``X-GitHub-Delivery`` header (a GUID, the same on redelivery).
        body: the raw body.

    Raises:
        MalformedPayload: missing headers, a body that is not a JSON object, or a handled
            event whose required fields are missing.
    """
    if not event_name or not delivery_id:
        missing = "X-GitHub-Event" if not event_name else "X-GitHub-Delivery"
        raise MalformedPayload(event=event_name or "?", detail=f"missing {missing} header")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(event=event_name, detail=f"not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise MalformedPayload(event=event_name, detail="not a JSON object")
    data = {**payload, "event": event_name, "delivery_id": delivery_id}
    action = payload.get("action")
    model = _MODELS.get(event_name)
    if model is None:
        return _unhandled(data, f"event {event_name!r} is not handled")
    allowed = get_args(model.model_fields["action"].annotation)  # the Literal's values
    if model is not PingEvent and action not in allowed:
        return _unhandled(data, f"{event_name}.{action} is not handled")
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MalformedPayload(event=event_name, detail=f"{where}: {first['msg']}") from None


def _unhandled(data: dict[str, Any], reason: str) -> UnhandledEvent:
    action = data.get("action")
    base = {
        "event": data["event"],
        "delivery_id": data["delivery_id"],
        "action": action if isinstance(action, str) else None,
        "reason": reason,
    }
    try:  # keep the repository when it parses, so the caller can log which one
        return UnhandledEvent.model_validate({**base, "repository": data.get("repository")})
    except ValidationError:
        return UnhandledEvent.model_validate(base)


def mentions(text: str | None, handle: str = "@claude") -> bool:
    """Whether ``text`` mentions ``handle`` as a word (``@claude``, not ``@claude-bot``
    nor ``me@claude.ai``)."""
    pattern = rf"(?<![\w@.-]){re.escape(handle)}(?![\w-])"
    return bool(text and re.search(pattern, text, flags=re.IGNORECASE))
