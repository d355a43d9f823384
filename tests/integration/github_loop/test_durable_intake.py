"""Durable webhook intake on the real coordinator: a delivery is processed from the
database, retried with back-off and given up after its attempts, resumed after the
process that claimed it died, and a redelivery before it is processed is a nudge."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from claude_cluster.coordinator.github_loop import GitHubLoop
from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tables import WebhookDelivery
from claude_cluster.github import GitHubEvent, RepositoryConfig, sign
from tests.conftest import RunningCoordinator
from tests.fakes.github_api import FakeGitHub
from tests.integration.github_loop.conftest import REPO, SECRET, Loop
from tests.integration.github_loop.test_pull_requests import (
    labelled_task,
    next_run,
    open_pr,
    result,
)
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loop_settings(loop_settings: dict[str, Any]) -> dict[str, Any]:
    return {
        **loop_settings,
        "github_delivery_retry_seconds": 0.2,
        "github_delivery_attempts": 3,
        "github_delivery_lease_seconds": 3.0,
    }


def labeled(fake: FakeGitHub, number: int, label: str = "claude-code") -> bytes:
    return json.dumps(
        {
            "action": "labeled",
            "issue": fake.issue(REPO, number),
            "label": {"name": label},
            "repository": {"full_name": REPO, "id": 1},
            "sender": {"login": "octocat"},
        }
    ).encode()


async def post(url: str, body: bytes, delivery: str) -> httpx.Response:
    headers = {
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, body),
    }
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url + "/webhook/github", content=body, headers=headers)


async def test_failures_are_retried_with_back_off_then_given_up_in_issue_order(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = loop.fake.create_issue(REPO, "Fails once", deliver=False)["number"]
    broken = loop.fake.create_issue(REPO, "Always fails", deliver=False)["number"]
    calls: Counter[str] = Counter()
    original = GitHubLoop.handle

    async def failing(self: GitHubLoop, event: GitHubEvent, cfg: RepositoryConfig) -> Any:
        calls[event.delivery_id] += 1
        if event.delivery_id == "broken-1" or calls["flaky"] == 1:
            raise RuntimeError(f"handler broke on {event.delivery_id}")
        return await original(self, event, cfg)

    monkeypatch.setattr(GitHubLoop, "handle", failing)
    assert (await post(loop.coordinator.url, labeled(loop.fake, flaky), "flaky")).status_code == 202
    first = await post(loop.coordinator.url, labeled(loop.fake, broken), "broken-1")
    # a later event of the same issue waits until the failing one is finished
    urgent = labeled(loop.fake, broken, "claude-code-urgent")
    later = await post(loop.coordinator.url, urgent, "broken-2")
    assert (first.status_code, later.status_code) == (202, 202)

    row = await loop.delivery("flaky")
    assert (row.status, row.attempts, row.payload) == ("processed", 2, None), row.reason
    assert row.task_id is not None and row.processed_at is not None

    gave_up = await loop.delivery("broken-1")
    assert (gave_up.status, gave_up.attempts) == ("error", 3)
    assert "RuntimeError: handler broke" in (gave_up.reason or "")
    assert gave_up.payload is not None  # kept for a look
    after = await loop.delivery("broken-2")
    assert after.processed_at is not None and gave_up.processed_at is not None
    assert after.processed_at >= gave_up.processed_at
    assert after.status == "processed", after.reason
    assert (calls["broken-1"], calls["broken-2"]) == (3, 1)
    # counted by outcome (the registry is shared by the tests of this process: at least);
    # the gauges say how many wait
    text = (await loop.api.get("/metrics")).text
    for outcome, least in (("retried", 3), ("error", 1), ("processed", 1)):
        line = f'claude_github_deliveries_total{{outcome="{outcome}"}} '
        value = next(x for x in text.splitlines() if x.startswith(line)).split()[1]
        assert float(value) >= least, outcome
    assert "claude_github_deliveries_waiting " in text
    assert "claude_github_delivery_oldest_waiting_seconds " in text
    # a redelivery of the given-up delivery is a duplicate: it is finished
    again = await post(loop.coordinator.url, labeled(loop.fake, broken), "broken-1")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")


async def test_a_delivery_claimed_by_a_process_that_died_is_resumed(
    fake_github: FakeGitHub,
    loop_settings: dict[str, Any],
    start_coordinator: Callable[..., RunningCoordinator],
    db_url: str,
) -> None:
    engine = create_engine(db_url)
    store = Repository(sessionmaker(engine), postgres=engine.dialect.name == "postgresql")
    try:
        number = fake_github.create_issue(REPO, "Before the crash", deliver=False)["number"]
        body = labeled(fake_github, number)
        # a coordinator recorded the delivery, claimed it, and died before finishing it
        recorded = await store.record_delivery(
            "crashed-1",
            "issues",
            "labeled",
            REPO,
            payload=body.decode(),
            issue_key=f"{REPO}#{number}",
        )
        assert recorded == "new"
        (claim,) = await store.claim_deliveries(10, lease_seconds=3.0)
        assert (claim.id, claim.attempt) == ("crashed-1", 1)

        coordinator = await asyncio.to_thread(start_coordinator, **loop_settings)
        # GitHub redelivers it while the dead claim lasts: a nudge, not a duplicate
        nudge = await post(coordinator.url, body, "crashed-1")
        assert (nudge.status_code, nudge.json()["status"]) == (202, "pending")

        async def finished() -> Any:
            row = await store.get_delivery("crashed-1")
            return row if row is not None and row.status != "received" else None

        row = await eventually(finished, timeout=15)
        assert (row.status, row.attempts, row.payload) == ("processed", 2, None), row.reason
        assert row.task_id is not None
        assert "claude-code-assigned" in fake_github.labels(REPO, number)
        duplicate = await post(coordinator.url, body, "crashed-1")
        assert (duplicate.status_code, duplicate.json()["status"]) == (200, "duplicate")
    finally:
        await engine.dispose()


async def test_events_of_one_issue_keep_their_order(loop: Loop) -> None:
    """``labeled`` then ``closed`` at once for many issues: each close sees its task."""
    numbers = [loop.fake.create_issue(REPO, f"I{i}", deliver=False)["number"] for i in range(8)]
    for n in numbers:
        answer = await post(loop.coordinator.url, labeled(loop.fake, n), f"label-{n}")
        assert answer.status_code == 202
    for n in numbers:
        closed = json.dumps(
            {
                "action": "closed",
                "issue": {**loop.fake.issue(REPO, n), "state": "closed"},
                "repository": {"full_name": REPO, "id": 1},
                "sender": {"login": "octocat"},
            }
        ).encode()
        assert (await post(loop.coordinator.url, closed, f"close-{n}")).status_code == 202
    for n in numbers:
        row = await loop.delivery(f"close-{n}")
        assert (row.status, row.reason) == ("processed", "issue closed: task cancelled")
    assert {t["status"] for t in await loop.tasks()} == {"cancelled"}


async def test_feedback_of_a_resumed_delivery_is_taken_once(loop: Loop) -> None:
    """A review whose process died after queueing its feedback is processed again: the
    feedback is not queued twice, nor answered twice."""
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, _ = await next_run(agent)
        branch = f"claude/issue-{issue}-crash"
        pr = await open_pr(loop, task_id, issue, branch)
        await sims.finish("a1", run_id, **result(pr, branch))
        await loop.task(task_id, "review")
        await loop.act(loop.fake.submit_review, REPO, pr["number"], "changes_requested", "More")
        review = loop.last_delivery()
        row = await loop.delivery(review.id)
        assert row.reason == "feedback queued", row.reason
        follow_up, request = await next_run(agent, after=run_id)
        assert "More" in request["feedback"]
        # as if the process had died before recording the outcome: due again, redelivered
        async with loop.sessions.begin() as s:
            await s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == review.id)
                .values(status="received", payload=review.body.decode(), processed_at=None)
            )
        nudge = await loop.act(loop.fake.redeliver, review.id)
        # the worker's own poll may have taken it again before GitHub's redelivery came
        assert json.loads(nudge.response_text)["status"] in ("pending", "duplicate")
        again = await loop.delivery(review.id)
        assert (again.status, again.reason) == (
            "ignored",
            "this delivery's feedback was taken before",
        )
        assert (again.attempts, sorted(agent.held)) == (2, [follow_up])
        feedback = (await loop.store.get_task(task_id)).feedback or ""
        assert feedback.count("More") == 1  # not queued again
        replies = [c for c in loop.fake.comments(REPO, pr["number"]) if "🤖" in c["body"]]
        assert len(replies) == 1


async def test_a_stopping_coordinator_gives_its_unfinished_claims_back(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work still under way when the grace runs out is cancelled, and its delivery is due
    again at once (its attempt not counted) for whichever process runs next."""
    number = loop.fake.create_issue(REPO, "Slow", deliver=False)["number"]

    async def stuck(self: GitHubLoop, event: GitHubEvent, cfg: RepositoryConfig) -> Any:
        await asyncio.sleep(3600)

    monkeypatch.setattr(GitHubLoop, "handle", stuck)
    assert (await post(loop.coordinator.url, labeled(loop.fake, number), "slow")).status_code == 202

    async def claimed() -> Any:
        row = await loop.store.get_delivery("slow")
        return row if row is not None and row.attempts == 1 else None

    await eventually(claimed, timeout=10)
    await asyncio.to_thread(loop.coordinator.server.stop)
    row = await loop.store.get_delivery("slow")
    assert row is not None
    assert (row.status, row.attempts, row.payload is not None) == ("received", 0, True)
    assert row.next_attempt_at is not None and row.next_attempt_at <= utcnow()
