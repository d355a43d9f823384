"""Webhook intake benchmark: a burst of GitHub deliveries to two coordinator processes.

Two real coordinator processes on a fresh PostgreSQL database, wired to the fake GitHub
(real HTTP both ways). This process sends ``--deliveries`` signed ``issues.labeled``
deliveries for ``--issues`` issues, alternating between the two, ``--redeliver`` of them
sent a second time at once (GitHub's redelivery), and with ``--kill`` one process is killed
with -9 after half of them (what it had claimed is resumed after its lease,
``--lease`` seconds). Prints: the 202 answer p50/p99, the time until every delivery is
finished and the deliveries per second, how many were lost (never finished), the tasks
per issue (must be 1), and how many deliveries were resumed (claimed more than once).

Run: ``uv run python bench/webhooks.py [--deliveries 500] [--issues 100] [--kill]``.
Numbers, not assertions: see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.github import sign
from tests.conftest import ADMIN_TOKEN
from tests.fakes.github_api import FakeGitHub
from tests.support import databases
from tests.support.processes import coordinator_process

REPO = "octo/app"
TOKEN = "ghp_bench_token_0123456789"
SECRET = b"bench-webhook-secret"
LABELS = ["claude-code", "claude-code-urgent", "claude-code-backend", "bug", "docs"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def burst(
    urls: list[str], pids: list[int], fake: FakeGitHub, store: Repository, args: Any
) -> dict[str, Any]:
    issues = [fake.create_issue(REPO, f"B{i}", deliver=False)["number"] for i in range(args.issues)]
    common = {"repository": {"full_name": REPO, "id": 1}, "sender": {"login": "octocat"}}
    deliveries = [
        (
            f"bench-{i}",
            {
                "action": "labeled",
                "issue": fake.issue(REPO, issues[i % len(issues)]),
                "label": {"name": LABELS[(i // len(issues)) % len(LABELS)]},
                **common,
            },
        )
        for i in range(args.deliveries)
    ]
    every = max(1, round(1 / args.redeliver)) if args.redeliver > 0 else 0
    latencies: list[float] = []
    alive = list(urls)
    client = httpx.AsyncClient(timeout=30)

    async def post(url: str, delivery: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        headers = {
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(SECRET, body),
        }
        started = time.perf_counter()
        try:
            answer = await client.post(url + "/webhook/github", content=body, headers=headers)
        except httpx.HTTPError:  # the killed process: GitHub would deliver it again
            await post(alive[-1], delivery, payload)
            return
        latencies.append(time.perf_counter() - started)
        assert answer.status_code in (200, 202), answer.text

    async def send(i: int, delivery: str, payload: dict[str, Any]) -> None:
        sends = [post(alive[i % len(alive)], delivery, payload)]
        if every and i % every == 0:
            sends.append(post(alive[(i + 1) % len(alive)], delivery, payload))
        await asyncio.gather(*sends)

    started = time.perf_counter()
    half = len(deliveries) // 2 if args.kill else len(deliveries)
    sem = asyncio.Semaphore(50)

    async def bounded(i: int, d: tuple[str, dict[str, Any]]) -> None:
        async with sem:
            await send(i, *d)

    await asyncio.gather(*(bounded(i, d) for i, d in enumerate(deliveries[:half])))
    if args.kill:
        os.killpg(pids[0], signal.SIGKILL)
        alive[:] = urls[1:]
        await asyncio.gather(*(bounded(i, d) for i, d in enumerate(deliveries[half:], half)))
    sent = time.perf_counter() - started
    ids = [d for d, _ in deliveries]
    deadline = time.monotonic() + args.lease * 3 + 120
    while True:
        rows = [await store.get_delivery(d) for d in ids]
        waiting = [r for r in rows if r is None or r.status == "received"]
        if not waiting or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    finished = time.perf_counter() - started
    await client.aclose()
    async with httpx.AsyncClient(
        base_url=urls[-1], headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as api:
        tasks = (await api.get("/api/v1/tasks", params={"limit": 1000})).json()
    per_issue = Counter(t["github_issue_number"] for t in tasks)
    return {
        "deliveries": len(ids),
        "redelivered": len(latencies) - len(ids),
        "answer p50 ms": pct(latencies, 0.5) * 1000,
        "answer p99 ms": pct(latencies, 0.99) * 1000,
        "all sent s": sent,
        "all finished s": finished,
        "deliveries/s": len(ids) / finished,
        "lost": len(waiting),
        "errors": sum(1 for r in rows if r is not None and r.status == "error"),
        "issues without one task": sum(1 for n in issues if per_issue[n] != 1),
        "resumed": sum(1 for r in rows if r is not None and r.attempts > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--issues", type=int, default=100)
    parser.add_argument("--redeliver", type=float, default=0.1, help="share sent twice at once")
    parser.add_argument("--kill", action="store_true", help="kill -9 one process halfway")
    parser.add_argument("--lease", type=float, default=5.0, help="GITHUB_DELIVERY_LEASE_SECONDS")
    parser.add_argument("--latency", type=float, default=0.0, help="fake GitHub's s per call")
    args = parser.parse_args()
    databases.make_pg_template()
    name, url = databases.new_pg_database()
    try:
        with tempfile.TemporaryDirectory() as tmp, FakeGitHub() as fake, ExitStack() as stack:
            fake.add_token(TOKEN, login="octocat")
            fake.add_repo(REPO)
            fake.add_collaborator(REPO, "octocat", "write")
            fake.latency = args.latency
            env = {
                "GITHUB_API_URL": fake.url,
                "GITHUB_TOKEN": TOKEN,
                "GITHUB_WEBHOOK_SECRET": SECRET.decode(),
                "GITHUB_REPOSITORIES": REPO,
                "GITHUB_DELIVERY_LEASE_SECONDS": str(args.lease),
            }
            procs = [
                stack.enter_context(coordinator_process(url, log=Path(tmp) / f"{n}.log", **env))
                for n in ("a", "b")
            ]
            engine = create_engine(url)
            store = Repository(sessionmaker(engine), postgres=True)

            async def run() -> dict[str, Any]:
                try:
                    return await burst(
                        [p.url for p in procs], [p.pid for p in procs], fake, store, args
                    )
                finally:
                    await engine.dispose()

            figures = asyncio.run(run())
    finally:
        databases.drop_pg_database(name)
        databases.drop_pg_template()
    for key, value in figures.items():
        print(f"{key:<24} {value:.1f}" if isinstance(value, float) else f"{key:<24} {value}")


if __name__ == "__main__":
    main()
