"""The webhook scenario of the chaos suite: a burst of signed deliveries from the fake
GitHub, some redelivered at once, a replica killed in the middle (see scenarios.py)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from typing import Any

from tests.chaos.scenarios import FAST, described, until
from tests.fakes.github_api import FakeGitHub
from tests.fakes.github_payloads import label_json
from tests.support.chaos import Figures, Lab, seconds_between

REPO = "octo/app"
GITHUB_TOKEN = "ghp_chaos_token_0123456789"
WEBHOOK_SECRET = b"chaos-webhook-secret"


async def webhook_burst(
    lab: Lab,
    *,
    deliveries: int,
    redelivered: float = 0.1,
    settings: dict[str, str] | None = None,
) -> Figures:
    """Two replicas behind a load balancer receive ``deliveries`` signed ``issues.labeled``
    deliveries from the fake GitHub (16 at a time), each for its own issue; a share of
    them is sent twice at once with the same delivery id (GitHub's redelivery), and one
    replica is killed with -9 halfway and started again. A delivery whose answer was lost
    is sent again, as GitHub's redelivery would. Each event must be processed exactly
    once: one task per issue, one progress comment per issue on GitHub, every delivery
    processed. Recovery: kill → every delivery accepted before it processed."""
    settings = {**FAST, "GITHUB_DELIVERY_LEASE_SECONDS": "5"} if settings is None else settings
    fake = FakeGitHub().start()
    try:
        return await _burst(lab, fake, deliveries, redelivered, settings)
    finally:
        fake.stop()


async def _burst(
    lab: Lab, fake: FakeGitHub, deliveries: int, redelivered: float, settings: dict[str, str]
) -> Figures:
    fake.add_token(GITHUB_TOKEN, login="octocat")
    fake.add_repo(REPO)
    fake.add_collaborator(REPO, "octocat", "write")
    github = {
        "GITHUB_API_URL": fake.url,
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET.decode(),
        "GITHUB_REPOSITORIES": REPO,
        "GITHUB_PROGRESS_INTERVAL": "0.5",
    }
    replicas = [lab.coordinator(**settings, **github), lab.coordinator(**settings, **github)]
    balancer = lab.proxy(c.port for c in replicas)
    hook = f"{balancer.url}/webhook/github"
    figures = Figures(
        "webhook burst, redeliveries, a replica killed",
        settings=f"{described(settings)} GITHUB_DELIVERY_LEASE_SECONDS="
        f"{settings.get('GITHUB_DELIVERY_LEASE_SECONDS', '60')}; 2 replicas; fake GitHub",
    )
    repo = fake._repo(REPO)
    jobs: list[tuple[str, dict[str, Any]]] = []
    for n in range(deliveries):
        issue = fake.create_issue(REPO, f"chaos issue {n + 1}", "append a line", deliver=False)
        fake.label_issue(REPO, issue["number"], "claude-code", deliver=False)
        extra = {"label": label_json(fake.url, repo, "claude-code")}
        payload = fake._issues_payload(repo, issue, "labeled", "octocat", extra)
        jobs.append((str(uuid.uuid4()), payload))
    twice = set(random.Random(15).sample(range(deliveries), int(deliveries * redelivered)))
    semaphore = asyncio.Semaphore(16)
    answers: dict[str, list[int]] = {}
    resent = 0
    killed_at = 0.0

    async def send(guid: str, payload: dict[str, Any]) -> None:
        nonlocal resent
        for attempt in range(200):
            delivery = await asyncio.to_thread(
                fake.deliver, hook, "issues", payload, WEBHOOK_SECRET, delivery_id=guid
            )
            answers.setdefault(guid, []).append(delivery.status_code or 0)
            if delivery.status_code in (200, 202):
                return
            resent += attempt == 0
            await asyncio.sleep(0.2)
        raise AssertionError(f"delivery {guid} never accepted: {answers[guid]}")

    async def one(i: int) -> None:
        guid, payload = jobs[i]
        async with semaphore:
            if i in twice:
                await asyncio.gather(send(guid, payload), send(guid, payload))
            else:
                await send(guid, payload)

    async def killer() -> None:
        nonlocal killed_at
        while sum(1 for a in answers.values() if a[-1] in (200, 202)) < deliveries // 2:
            await asyncio.sleep(0.01)
        replicas[0].kill()
        killed_at = time.time()
        figures.faults += 1
        await asyncio.sleep(2)
        await asyncio.to_thread(replicas[0].start)

    kill = asyncio.create_task(killer())
    await asyncio.gather(*(one(i) for i in range(deliveries)))
    await kill
    figures.tasks = deliveries
    guids = [guid for guid, _ in jobs]

    async def all_processed() -> bool:
        rows = await lab.query(
            "SELECT count(*) AS n FROM webhook_deliveries WHERE id = ANY($1) "
            "AND processed_at IS NOT NULL",
            guids,
        )
        return rows[0]["n"] == deliveries

    with contextlib.suppress(AssertionError):
        await until(all_processed, 120, "every delivery processed", interval=0.5)
    rows = await lab.query(
        "SELECT id, status, reason, processed_at FROM webhook_deliveries WHERE id = ANY($1)",
        guids,
    )
    unprocessed = [f"{r['id']} {r['status']} {r['reason']}" for r in rows
                   if r["processed_at"] is None]  # fmt: skip
    missing = deliveries - len(rows)
    tasks = await lab.query(
        "SELECT github_issue_number AS n, count(*) AS c FROM tasks "
        "WHERE github_repository = $1 GROUP BY 1",
        REPO,
    )
    per_issue = {r["n"]: r["c"] for r in tasks}
    numbers = [p["issue"]["number"] for _, p in jobs]
    no_task = [n for n in numbers if n not in per_issue]
    await asyncio.sleep(2)  # the progress comments of the last tasks
    comments = {n: len(fake.comments(REPO, n)) for n in numbers}
    figures.lost = missing + len(unprocessed) + len(no_task)
    figures.duplicated = sum(1 for n in numbers if per_issue.get(n, 0) > 1) + sum(
        1 for c in comments.values() if c > 1
    )
    figures.notes += unprocessed[:5] + [f"issue {n}: no task" for n in no_task[:5]]
    figures.notes += [f"issue {n}: {c} comments" for n, c in comments.items() if c > 1][:5]
    figures.notes.append(
        f"{len(twice)} sent twice at once, {resent} resent after a failed answer, "
        f"{sum(1 for c in comments.values() if c == 0)} issues without a progress comment"
    )
    processed = await lab.query(
        "SELECT processed_at FROM webhook_deliveries WHERE id = ANY($1) AND received_at < "
        "to_timestamp($2) AND processed_at > to_timestamp($2)",
        guids,
        killed_at,
    )
    figures.recovery = [
        s for r in processed if (s := seconds_between(killed_at, r["processed_at"])) is not None
    ]
    return figures
