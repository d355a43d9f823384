"""``POST /webhook/github`` on the real coordinator: refusals, deduplication, and the issue
events (labeled, opened, edited, closed, unlabeled) against the fake GitHub."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sqlalchemy import select

from claude_cluster.coordinator.store.tables import WebhookDelivery
from claude_cluster.github.webhooks import MAX_PAYLOAD_BYTES
from tests.integration.github_loop.conftest import OTHER, REPO, TOKEN, Loop

pytestmark = pytest.mark.timeout(60)


async def test_health_and_ping(loop: Loop) -> None:
    async with httpx.AsyncClient(base_url=loop.coordinator.url) as client:
        health = await client.get("/webhook/health")
    assert health.json() == {"status": "healthy", "service": "github-webhook"}
    delivery = await loop.act(loop.fake.ping)
    assert delivery["zen"]
    answer = loop.last_delivery()
    assert answer.status_code == 200 and json.loads(answer.response_text)["status"] == "pong"
    row = await loop.delivery(answer.id)
    assert (row.event, row.status, row.reason) == ("ping", "processed", "ping")


def _refused_count(metrics: str) -> float:
    prefix = 'claude_github_webhooks_total{event_type="refused"} '
    line = next((x for x in metrics.splitlines() if x.startswith(prefix)), None)
    return float(line.split()[1]) if line else 0.0


async def test_refused_deliveries_are_counted_never_stored(loop: Loop) -> None:
    before = _refused_count((await loop.api.get("/metrics")).text)
    body = json.dumps({"action": "opened"}).encode()
    unsigned = await loop.post("issues", body, secret=None)
    wrong = await loop.post("issues", body, secret=b"not-the-secret")
    malformed = await loop.post("issues", b"{not json", delivery="d-bad")
    missing_fields = await loop.post("issues", body, delivery="d-partial")
    too_big = await loop.post("issues", b"x" * (MAX_PAYLOAD_BYTES + 1))
    statuses = [r.status_code for r in (unsigned, wrong, malformed, missing_fields, too_big)]
    assert statuses == [400, 401, 400, 400, 413]
    assert "signature" in wrong.json()["detail"]
    # an attacker's flood fills no table, and never occupies the id it claimed
    async with loop.sessions() as s:
        assert (await s.scalars(select(WebhookDelivery))).all() == []
    assert await loop.store.get_delivery("d-1") is None
    after = _refused_count((await loop.api.get("/metrics")).text)
    assert after == before + 5


async def test_labelling_creates_one_task_and_marks_the_issue(loop: Loop) -> None:
    issue = loop.fake.create_issue(REPO, "Crash on empty input", "Steps: run it", deliver=False)
    await loop.act(loop.fake.label_issue, REPO, issue["number"], "claude-code")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "processed" and row.task_id is not None
    task = await loop.task(row.task_id)
    assert (task["github_repository"], task["github_issue_number"]) == (REPO, issue["number"])
    assert task["description"] == "Steps: run it"
    assert "claude-code-assigned" in loop.fake.labels(REPO, issue["number"])
    # the same delivery again is a no-op; another label event lands on the same task
    again = await loop.act(loop.fake.redeliver, row.id)
    assert again.status_code == 200 and json.loads(again.response_text)["status"] == "duplicate"
    await loop.act(loop.fake.label_issue, REPO, issue["number"], "claude-code-urgent")
    second = await loop.delivery(loop.last_delivery().id)
    assert second.status == "ignored" and second.task_id == task["id"]
    assert len(await loop.tasks()) == 1


async def test_concurrent_duplicates_make_one_task(loop: Loop) -> None:
    issue = loop.fake.create_issue(REPO, "Race", labels=["claude-code"], deliver=False)
    payload = json.dumps(
        {
            "action": "labeled",
            "issue": loop.fake.issue(REPO, issue["number"]),
            "label": {"name": "claude-code"},
            "repository": {"full_name": REPO, "id": 1},
            "sender": {"login": "octocat"},
        }
    ).encode()
    # the same delivery five times at once, and five distinct deliveries of the same change
    same = [loop.post("issues", payload, delivery="dup-1") for _ in range(5)]
    distinct = [loop.post("issues", payload, delivery=f"dist-{i}") for i in range(5)]
    answers = await asyncio.gather(*same, *distinct)
    states = [a.json()["status"] for a in answers[:5]]
    # one records it; the others nudge it while it waits, or find it processed
    assert states.count("accepted") == 1
    assert set(states) <= {"accepted", "pending", "duplicate"}
    rows = [await loop.delivery(d) for d in ["dup-1", *[f"dist-{i}" for i in range(5)]]]
    assert len({row.task_id for row in rows}) == 1
    assert [row.status for row in rows].count("processed") == 1
    assert len(await loop.tasks()) == 1


async def test_ignored_events_say_why(loop: Loop) -> None:
    other = loop.fake.create_issue(OTHER, "Elsewhere", deliver=False)
    await loop.act(loop.fake.label_issue, OTHER, other["number"], "claude-code")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored" and "not watched" in (row.reason or "")

    held = loop.fake.create_issue(REPO, "Needs design", labels=["on-hold"], deliver=False)
    await loop.act(loop.fake.label_issue, REPO, held["number"], "claude-code")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored" and "on-hold" in (row.reason or "")

    await loop.act(loop.fake.create_issue, REPO, "Plain issue")  # opened, no trigger label
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored" and "no trigger label" in (row.reason or "")

    await loop.act(loop.fake.push_to_pull_request, REPO, _pr(loop))
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored"
    assert await loop.tasks() == []


def _pr(loop: Loop) -> int:
    answer = httpx.post(
        f"{loop.fake.url}/repos/{REPO}/pulls",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"title": "Human PR", "head": "feature", "base": "main", "body": "by hand"},
    )
    return int(answer.json()["number"])


async def test_edited_closed_and_unlabeled(loop: Loop) -> None:
    first = loop.fake.create_issue(REPO, "Old title", "old body", deliver=False)
    await loop.act(loop.fake.label_issue, REPO, first["number"], "claude-code")
    task_id = (await loop.delivery(loop.last_delivery().id)).task_id
    assert task_id is not None
    await loop.act(loop.fake.edit_issue, REPO, first["number"], title="New title", body="new")
    await loop.delivery(loop.last_delivery().id)
    task = await loop.task(task_id)
    assert (task["title"], task["description"]) == ("New title", "new")
    await loop.act(loop.fake.close_issue, REPO, first["number"])
    await loop.task(task_id, "cancelled")

    second = loop.fake.create_issue(REPO, "Second", deliver=False)
    await loop.act(loop.fake.label_issue, REPO, second["number"], "claude-code")
    second_task = (await loop.delivery(loop.last_delivery().id)).task_id
    assert second_task is not None
    await loop.act(loop.fake.unlabel_issue, REPO, second["number"], "claude-code")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "processed" and "cancelled" in (row.reason or "")
    await loop.task(second_task, "cancelled")
