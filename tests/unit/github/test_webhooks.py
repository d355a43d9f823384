"""Webhook signature checks and parsing of every payload kind the product handles."""

from __future__ import annotations

import json

import pytest

from claude_cluster.errors import ConfigError
from claude_cluster.github import (
    InvalidSignature,
    IssueCommentEvent,
    IssuesEvent,
    MalformedPayload,
    MissingSignature,
    PingEvent,
    PullRequestEvent,
    PullRequestReviewEvent,
    UnhandledEvent,
    mentions,
    parse_event,
    sign,
    verify_signature,
)
from tests.fakes.github_payloads import issue_labeled_payload

GUID = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


class TestVerifySignature:
    def test_reference_vector(self) -> None:
        header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        assert sign(b"It's a Secret to Everybody", b"Hello, World!") == header
        verify_signature(b"It's a Secret to Everybody", b"Hello, World!", header)

    def test_missing_header_is_its_own_error(self) -> None:
        with pytest.raises(MissingSignature):
            verify_signature(b"s", b"{}", None)
        with pytest.raises(MissingSignature):
            verify_signature(b"s", b"{}", "")

    @pytest.mark.parametrize(
        "header",
        [
            "sha256=" + "0" * 64,
            sign(b"other secret", b"{}"),
            sign(b"s", b"{}").removeprefix("sha256="),  # no algorithm prefix
            "sha1=" + "0" * 40,
            "sha256=é" + "0" * 63,  # non-ASCII must not crash compare_digest
        ],
    )
    def test_wrong_signature(self, header: str) -> None:
        with pytest.raises(InvalidSignature):
            verify_signature(b"s", b"{}", header)

    def test_signature_covers_the_raw_bytes_not_the_json(self) -> None:
        raw = b'{"a": 1}'
        reserialized = json.dumps(json.loads(raw), separators=(",", ":")).encode()
        with pytest.raises(InvalidSignature):
            verify_signature(b"s", reserialized, sign(b"s", raw))

    def test_empty_secret_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigError):
            verify_signature(b"", b"{}", sign(b"", b"{}"))


class TestIssues:
    def test_labeled(self, payload_bytes) -> None:
        event = parse_event("issues", GUID, payload_bytes("issues.labeled"))
        assert isinstance(event, IssuesEvent)
        assert event.action == "labeled"
        assert event.delivery_id == GUID
        assert event.label is not None and event.label.name == "claude-code"
        assert event.issue.number == 17
        assert event.issue.label_names == ("bug", "claude-code")
        assert event.repository.full_name == "octo-org/hello-world"
        assert event.repository.default_branch == "main"
        assert event.repository.clone_url == "https://github.com/octo-org/hello-world.git"
        assert event.installation is not None and event.installation.id == 5555555
        assert event.sender is not None and event.sender.login == "octocat"
        assert not event.issue.is_pull_request

    @pytest.mark.parametrize("action", ["opened", "closed", "reopened", "unlabeled"])
    def test_other_actions(self, payload_bytes, action: str) -> None:
        event = parse_event("issues", GUID, payload_bytes(f"issues.{action}"))
        assert isinstance(event, IssuesEvent)
        assert event.action == action

    def test_closed_carries_the_state_reason(self, payload_bytes) -> None:
        event = parse_event("issues", GUID, payload_bytes("issues.closed"))
        assert isinstance(event, IssuesEvent)
        assert (event.issue.state, event.issue.state_reason) == ("closed", "not_planned")

    def test_edited_keeps_the_changes(self, payload_bytes) -> None:
        event = parse_event("issues", GUID, payload_bytes("issues.edited"))
        assert isinstance(event, IssuesEvent)
        assert event.changes == {"title": {"from": "Crash"}, "body": {"from": "It crashes."}}

    def test_null_body_is_accepted(self) -> None:
        body = issue_labeled_payload("o/r", 3, "claude-code")
        body["issue"]["body"] = None
        event = parse_event("issues", GUID, json.dumps(body))
        assert isinstance(event, IssuesEvent) and event.issue.body is None


class TestComments:
    def test_comment_on_a_pull_request(self, payload_bytes) -> None:
        event = parse_event(
            "issue_comment", GUID, payload_bytes("issue_comment.created.pull_request")
        )
        assert isinstance(event, IssueCommentEvent)
        assert event.on_pull_request
        assert event.issue.number == 18
        assert mentions(event.comment.body)

    def test_comment_on_a_plain_issue(self, payload_bytes) -> None:
        event = parse_event("issue_comment", GUID, payload_bytes("issue_comment.created.issue"))
        assert isinstance(event, IssueCommentEvent)
        assert not event.on_pull_request
        assert event.comment.body == "I can reproduce this on 2.3.1"

    def test_edited_comment_is_unhandled(self, payload) -> None:
        body = payload("issue_comment.created.issue") | {"action": "edited"}
        event = parse_event("issue_comment", GUID, json.dumps(body))
        assert isinstance(event, UnhandledEvent)
        assert event.reason == "issue_comment.edited is not handled"


class TestPullRequests:
    def test_opened(self, payload_bytes) -> None:
        event = parse_event("pull_request", GUID, payload_bytes("pull_request.opened"))
        assert isinstance(event, PullRequestEvent)
        assert event.number == 18
        assert event.pull_request.head.ref == "claude/issue-17-crash-empty-config"
        assert event.pull_request.head.label == "octo-org:claude/issue-17-crash-empty-config"
        assert event.pull_request.base.ref == "main"
        assert not event.merged

    def test_closed_merged_and_unmerged(self, payload_bytes) -> None:
        merged = parse_event("pull_request", GUID, payload_bytes("pull_request.closed.merged"))
        unmerged = parse_event("pull_request", GUID, payload_bytes("pull_request.closed.unmerged"))
        assert isinstance(merged, PullRequestEvent) and merged.merged
        assert merged.pull_request.merged_at is not None
        assert isinstance(unmerged, PullRequestEvent) and not unmerged.merged
        assert unmerged.pull_request.merged_at is None

    def test_synchronize_and_reopened(self, payload_bytes) -> None:
        sync = parse_event("pull_request", GUID, payload_bytes("pull_request.synchronize"))
        assert isinstance(sync, PullRequestEvent) and sync.before and sync.after
        reopened = parse_event("pull_request", GUID, payload_bytes("pull_request.reopened"))
        assert isinstance(reopened, PullRequestEvent) and reopened.action == "reopened"

    def test_review_changes_requested(self, payload_bytes) -> None:
        event = parse_event(
            "pull_request_review", GUID, payload_bytes("pull_request_review.submitted")
        )
        assert isinstance(event, PullRequestReviewEvent)
        assert event.changes_requested
        assert event.review.body == "Please add a regression test for the empty file."
        assert event.pull_request.number == 18

    def test_rest_api_review_state_is_lowered(self, payload) -> None:
        body = payload("pull_request_review.submitted")
        body["review"]["state"] = "APPROVED"
        event = parse_event("pull_request_review", GUID, json.dumps(body))
        assert isinstance(event, PullRequestReviewEvent)
        assert event.review.state == "approved" and not event.changes_requested


class TestOtherDeliveries:
    def test_ping(self, payload_bytes) -> None:
        event = parse_event("ping", GUID, payload_bytes("ping"))
        assert isinstance(event, PingEvent)
        assert event.hook_id == 42000001
        assert event.zen

    def test_unknown_event_is_unhandled_with_a_reason(self, payload_bytes) -> None:
        event = parse_event("push", GUID, payload_bytes("push"))
        assert isinstance(event, UnhandledEvent)
        assert event.reason == "event 'push' is not handled"
        assert event.repository_name == "octo-org/hello-world"

    def test_unknown_action_is_unhandled(self, payload_bytes) -> None:
        event = parse_event("issues", GUID, payload_bytes("issues.assigned"))
        assert isinstance(event, UnhandledEvent)
        assert (event.action, event.reason) == ("assigned", "issues.assigned is not handled")


class TestMalformed:
    @pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b""])
    def test_not_a_json_object(self, body: bytes) -> None:
        with pytest.raises(MalformedPayload):
            parse_event("issues", GUID, body)

    def test_handled_event_missing_its_issue(self, payload) -> None:
        body = payload("issues.labeled")
        del body["issue"]
        with pytest.raises(MalformedPayload, match="issue"):
            parse_event("issues", GUID, json.dumps(body))

    @pytest.mark.parametrize(("event", "delivery"), [(None, GUID), ("issues", None), ("", GUID)])
    def test_missing_headers(self, event, delivery) -> None:
        with pytest.raises(MalformedPayload, match="missing X-GitHub"):
            parse_event(event, delivery, b"{}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@claude please fix", True),
        ("thanks @Claude.", True),
        ("(@claude)", True),
        ("@claude-bot do it", False),
        ("mail me@claude.ai", False),
        ("@claudette", False),
        ("", False),
        (None, False),
    ],
)
def test_mentions(text: str | None, expected: bool) -> None:
    assert mentions(text) is expected
