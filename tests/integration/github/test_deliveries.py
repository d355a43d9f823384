"""The fake's webhook deliveries, received by a real HTTP endpoint that uses the product's
verify_signature and parse_event: what the coordinator's route will do."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from claude_cluster.github import (
    GitHubEvent,
    IssueCommentEvent,
    IssuesEvent,
    PingEvent,
    PullRequestEvent,
    PullRequestReviewEvent,
    WebhookError,
    parse_event,
    verify_signature,
)
from tests.fakes.github_api import FakeGitHub
from tests.integration.github.conftest import REPO
from tests.support.servers import ServerThread

SECRET = b"webhook-secret"


class Receiver:
    """A minimal webhook endpoint: 401 on a bad signature, records parsed events."""

    def __init__(self) -> None:
        self.events: list[GitHubEvent] = []
        self.headers: list[dict[str, str]] = []
        self.received = threading.Event()
        app = FastAPI()

        @app.post("/webhook/github")
        async def hook(request: Request) -> Response:
            body = await request.body()
            try:
                verify_signature(SECRET, body, request.headers.get("x-hub-signature-256"))
                event = parse_event(
                    request.headers.get("x-github-event"),
                    request.headers.get("x-github-delivery"),
                    body,
                )
            except WebhookError as exc:
                return Response(str(exc), status_code=401)
            self.events.append(event)
            self.headers.append(dict(request.headers))
            self.received.set()
            return Response(status_code=202)

        self.server = ServerThread(app)
        self.url = self.server.url + "/webhook/github"


@pytest.fixture
def receiver(fake_github: FakeGitHub) -> Iterator[Receiver]:
    rec = Receiver()
    rec.server.start()
    fake_github.set_hook(rec.url, SECRET)
    yield rec
    rec.server.stop()


def test_labelling_an_issue_delivers_a_signed_labeled_event(fake_github, receiver) -> None:
    issue = fake_github.create_issue(REPO, "Crash", "boom", deliver=False)
    fake_github.label_issue(REPO, issue["number"], "claude-code")
    (event,) = receiver.events
    assert isinstance(event, IssuesEvent) and event.action == "labeled"
    assert event.label is not None and event.label.name == "claude-code"
    assert event.issue.label_names == ("claude-code",)
    headers = receiver.headers[0]
    assert headers["user-agent"].startswith("GitHub-Hookshot/")
    assert headers["x-github-event"] == "issues"
    assert headers["x-github-hook-id"] == str(fake_github.hook_id)
    assert headers["content-type"] == "application/json"
    assert event.delivery_id == headers["x-github-delivery"]
    assert fake_github.deliveries[-1].status_code == 202


def test_redelivery_keeps_the_guid(fake_github, receiver) -> None:
    fake_github.create_issue(REPO, "Crash")
    original = fake_github.deliveries[-1]
    again = fake_github.redeliver(original.id)
    assert again.id == original.id and again.body == original.body
    assert [e.delivery_id for e in receiver.events] == [original.id, original.id]


def test_a_wrong_secret_is_refused(fake_github, receiver) -> None:
    delivery = fake_github.deliver(receiver.url, "issues", {"action": "opened"}, b"wrong")
    assert delivery.status_code == 401
    assert receiver.events == []


def test_pull_request_lifecycle_events(fake_github, receiver) -> None:
    fake_github.add_token("ghs_app", login="claude-cluster[bot]")
    answer = httpx.post(
        f"{fake_github.url}/repos/{REPO}/pulls",
        headers={"Authorization": "Bearer ghs_app"},
        json={"title": "Fix", "head": "claude/issue-1-fix", "base": "main", "body": "Task ID: 5"},
    )
    assert answer.status_code == 201
    assert answer.headers["location"].endswith(f"/repos/{REPO}/pulls/1")
    assert receiver.received.wait(5)  # the opened event is sent after the API answer
    number = answer.json()["number"]
    fake_github.comment(REPO, number, "@claude also handle None")
    fake_github.submit_review(REPO, number, "changes_requested", "Add a test")
    fake_github.push_to_pull_request(REPO, number)
    fake_github.merge_pull_request(REPO, number)
    opened, comment, review, sync, closed = receiver.events
    assert isinstance(opened, PullRequestEvent) and opened.action == "opened"
    assert opened.pull_request.user is not None
    assert opened.pull_request.user.login == "claude-cluster[bot]"
    assert isinstance(comment, IssueCommentEvent) and comment.on_pull_request
    assert isinstance(review, PullRequestReviewEvent) and review.changes_requested
    assert isinstance(sync, PullRequestEvent) and sync.action == "synchronize" and sync.after
    assert isinstance(closed, PullRequestEvent) and closed.merged
    assert fake_github.issue(REPO, number)["state"] == "closed"


def test_ping(fake_github, receiver) -> None:
    fake_github.ping()
    (event,) = receiver.events
    assert isinstance(event, PingEvent) and event.hook_id == fake_github.hook_id
