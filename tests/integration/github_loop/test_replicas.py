"""Two coordinator processes on one PostgreSQL, wired to one fake GitHub: the events of
one issue keep their order whichever process received them, and one process polls each
repository (the holder of its cluster lease), another taking over when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.github import sign
from tests.conftest import ADMIN_TOKEN
from tests.fakes.github_api import FakeGitHub
from tests.integration.github_loop.conftest import REPO, SECRET, TOKEN
from tests.support import databases
from tests.support.processes import CoordinatorProcess, coordinator_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

POLLER = f"github_poller:{REPO}"


@pytest.fixture
def pg_url(_pg_template: None) -> Iterator[str]:
    name, url = databases.new_pg_database()
    try:
        yield url
    finally:
        databases.drop_pg_database(name)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Repository]:
    engine = create_engine(pg_url)
    try:
        yield Repository(sessionmaker(engine), postgres=True)
    finally:
        await engine.dispose()


def start_two(
    stack: ExitStack, pg_url: str, fake: FakeGitHub, tmp_path: Path, **extra: str
) -> list[CoordinatorProcess]:
    env = {
        "GITHUB_API_URL": fake.url,
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_WEBHOOK_SECRET": SECRET.decode(),
        "GITHUB_REPOSITORIES": REPO,
        "GITHUB_PROGRESS_INTERVAL": "0.2",
        **extra,
    }
    return [
        stack.enter_context(coordinator_process(pg_url, log=tmp_path / f"{name}.log", **env))
        for name in ("a", "b")
    ]


async def post(url: str, event: str, payload: dict[str, Any], delivery: str) -> int:
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, body),
    }
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(url + "/webhook/github", content=body, headers=headers)
    return answer.status_code


async def test_events_of_one_issue_keep_their_order_across_processes(
    pg_url: str, fake_github: FakeGitHub, store: Repository, tmp_path: Path
) -> None:
    """``labeled`` to one process, ``closed`` to the other right after: every close sees
    the task its label created."""
    numbers = [fake_github.create_issue(REPO, f"I{i}", deliver=False)["number"] for i in range(6)]
    fake_github.latency = 0.3  # a label's work takes a while: a close must wait for it
    with ExitStack() as stack:
        a, b = start_two(stack, pg_url, fake_github, tmp_path)

        async def label_then_close(n: int) -> None:
            issue = fake_github.issue(REPO, n)
            common = {"repository": {"full_name": REPO, "id": 1}, "sender": {"login": "octocat"}}
            labeled = {"action": "labeled", "issue": issue, "label": {"name": "claude-code"}}
            closed = {"action": "closed", "issue": {**issue, "state": "closed"}}
            first, second = (a, b) if n % 2 else (b, a)
            assert await post(first.url, "issues", {**labeled, **common}, f"label-{n}") == 202
            assert await post(second.url, "issues", {**closed, **common}, f"close-{n}") == 202

        await asyncio.gather(*(label_then_close(n) for n in numbers))

        async def all_finished() -> list[Any] | None:
            rows = [await store.get_delivery(f"close-{n}") for n in numbers]
            done = all(r is not None and r.status != "received" for r in rows)
            return rows if done else None

        rows = await eventually(all_finished, timeout=60, interval=0.2)
        assert {(r.status, r.reason) for r in rows} == {
            ("processed", "issue closed: task cancelled")
        }
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=a.url, headers=headers, timeout=30) as api:
            tasks = (await api.get("/api/v1/tasks", params={"limit": 100})).json()
        assert len(tasks) == len(numbers)
        assert {t["status"] for t in tasks} == {"cancelled"}


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_one_process_polls_a_repository_and_another_takes_over(
    pg_url: str, fake_github: FakeGitHub, store: Repository, tmp_path: Path, stop: int
) -> None:
    """A stopping holder gives the poller's lease up; a killed one leaves it to run out
    (RUN_LEASE_SECONDS, 2 s here)."""
    interval = 0.3
    fake_github.create_issue(REPO, "Polled", labels=["claude-code"], deliver=False)
    with ExitStack() as stack:
        procs = start_two(
            stack, pg_url, fake_github, tmp_path,
            GITHUB_POLL_INTERVAL=str(interval), RUN_LEASE_SECONDS="2",
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        api = httpx.AsyncClient(base_url=procs[0].url, headers=headers, timeout=30)

        async def tasks(count: int) -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = (await api.get("/api/v1/tasks")).json()
            return found if len(found) >= count else None

        async def holder() -> str | None:
            return await store.lease_holder(POLLER)

        try:
            (task,) = await eventually(lambda: tasks(1), timeout=20)
            assert task["created_by"] == "github:poll"
            first = await eventually(holder, timeout=10)
            pid = int(first.split(":")[1])
            assert pid in {p.pid for p in procs}

            # one poller: listings come at the pace of one, and the lease stays put
            def listings() -> int:
                return sum(1 for r in fake_github.requests if r["path"] == f"/repos/{REPO}/issues")

            before, started = listings(), time.monotonic()
            await asyncio.sleep(3)
            rate = (listings() - before) / (time.monotonic() - started)
            assert 0 < rate <= 1.3 / interval, f"{rate:.1f} listings a second"
            assert await holder() == first

            # the holder stops (and gives the lease up) or dies: the other process polls now
            os.killpg(pid, stop)

            async def taken_over() -> str | None:
                now = await holder()
                return now if now is not None and now != first else None

            second = await eventually(taken_over, timeout=15)
            survivor = next(p for p in procs if p.pid != pid)
            assert int(second.split(":")[1]) == survivor.pid
            fake_github.create_issue(REPO, "Polled later", labels=["claude-code"], deliver=False)
            await api.aclose()
            api = httpx.AsyncClient(base_url=survivor.url, headers=headers, timeout=30)
            await eventually(lambda: tasks(2), timeout=20)
        finally:
            await api.aclose()


async def test_a_burst_with_redeliveries_survives_a_killed_process(
    pg_url: str, fake_github: FakeGitHub, store: Repository, tmp_path: Path
) -> None:
    """200 deliveries for 40 issues to two processes, 10% redelivered at once, one process
    killed with -9 halfway: every delivery is finished, each issue has one task."""
    issues = [fake_github.create_issue(REPO, f"B{i}", deliver=False)["number"] for i in range(40)]
    fake_github.latency = 0.02
    common = {"repository": {"full_name": REPO, "id": 1}, "sender": {"login": "octocat"}}
    labels = ["claude-code", "claude-code-urgent", "bug", "claude-code-backend", "docs"]
    deliveries = [
        (
            f"burst-{n}-{k}",
            {
                "action": "labeled",
                "issue": fake_github.issue(REPO, n),
                "label": {"name": labels[k]},
                **common,
            },
        )
        for k in range(len(labels))
        for n in issues
    ]
    with ExitStack() as stack:
        a, b = start_two(stack, pg_url, fake_github, tmp_path, GITHUB_DELIVERY_LEASE_SECONDS="3")
        answers: list[int] = []

        async def send(i: int, delivery: str, payload: dict[str, Any]) -> None:
            target = a if i % 2 else b
            try:
                answers.append(await post(target.url, "issues", payload, delivery))
            except httpx.HTTPError:  # the killed process: GitHub would redeliver
                answers.append(0)
                await post(b.url, "issues", payload, delivery)
            if i % 10 == 0:  # redelivered while the first is under way
                answers.append(await post(b.url, "issues", payload, delivery))

        half = len(deliveries) // 2
        await asyncio.gather(*(send(i, *d) for i, d in enumerate(deliveries[:half])))
        os.killpg(a.pid, signal.SIGKILL)  # mid-work: some claims die with it
        await asyncio.gather(*(send(i, *d) for i, d in enumerate(deliveries[half:], half)))

        async def all_finished() -> list[Any] | None:
            rows = [await store.get_delivery(d) for d, _ in deliveries]
            return rows if all(r is not None and r.status != "received" for r in rows) else None

        rows = await eventually(all_finished, timeout=60, interval=0.5)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=b.url, headers=headers, timeout=30) as api:
            tasks = (await api.get("/api/v1/tasks", params={"limit": 1000})).json()
    assert {r.status for r in rows} <= {"processed", "ignored"}, {r.reason for r in rows}
    assert sorted(t["github_issue_number"] for t in tasks) == sorted(issues)
    # each issue's task was created by one delivery; one the killed process had created
    # before it could record so is resumed and finds it ("already open")
    created = Counter(r.task_id for r in rows if r.reason == f"task {r.task_id} created")
    assert max(created.values()) == 1
    for task in tasks:
        assert created[task["id"]] == 1 or any(
            r.task_id == task["id"] and r.attempts > 1 and "already open" in (r.reason or "")
            for r in rows
        )
    assert all(len(fake_github.comments(REPO, n)) <= 1 for n in issues)
    resumed = sum(1 for r in rows if r.attempts > 1)
    print(f"deliveries={len(rows)} redelivered={len(answers) - len(rows)} resumed={resumed}")
