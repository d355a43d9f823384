"""Dispatch benchmark: how fast a queued task reaches an agent, and how many complete.

A real coordinator process on a fresh PostgreSQL database (default durability), 50
simulated agents (real HTTP on loopback, no-op work that reports its result at once), and
this process submitting tasks. Prints:

- task created → ``/execute_task`` received, p50/p90/p99, paced (one task every 20 ms);
- the same under a flood of 5,000 tasks, and the sustained completed tasks per second;
- the coordinator's RSS (current and peak);
- with default settings, the time from an agent's death to its run being requeued.

Run: ``uv run python bench/dispatch.py [--tasks 5000] [--agents 50] [--skip-death]``.
Numbers, not assertions: see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import ADMIN_TOKEN
from tests.support import databases
from tests.support.processes import coordinator_process
from tests.support.sim_agents import SimAgents

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bench_settings(workers: int, agents: int) -> dict[str, str]:
    """The coordinator's settings in every run of this benchmark: with several workers,
    Redis fans the wake-ups out between them and the pools fit PostgreSQL's 100
    connections."""
    settings = {
        "SWEEP_INTERVAL": "2",
        "LOG_LEVEL": "WARNING",
        "MAX_CONCURRENT_TASKS": "1000",
        "MAX_AGENTS": str(max(100, agents + 10)),
        "WORKERS": str(workers),
    }
    if workers > 1:
        settings.update(REDIS_URL="redis://127.0.0.1:6379/0", DATABASE_MAX_OVERFLOW="5")
    return settings


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (uvicorn workers are children of the supervisor)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_status(int(entry.name))["PPid"]) == pid:
                    pids.append(int(entry.name))
            except (OSError, KeyError):
                continue
    return pids


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident memory of the coordinator's processes, summed."""
    now = peak = 0.0
    for p in _tree(pid):
        fields = _status(p)
        now += int(fields["VmRSS"].split()[0]) / 1024
        peak += int(fields["VmHWM"].split()[0]) / 1024
    return now, peak


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the coordinator's processes so far: a figure that the
    other load on a shared machine skews far less than wall time."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in _tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Load:
    def __init__(self, api: httpx.AsyncClient, sims: SimAgents) -> None:
        self.api = api
        self.sims = sims
        self.sent: dict[int, float] = {}
        self.issue = 0

    async def submit(self) -> None:
        self.issue += 1
        issue = self.issue
        self.sent[issue] = time.monotonic()
        response = await self.api.post(
            "/api/v1/tasks",
            json={
                "title": f"bench {issue}",
                "github_repository": "bench/app",
                "github_issue_number": issue,
                "requirements": [],
            },
        )
        response.raise_for_status()

    def latencies_ms(self, issues: range) -> list[float]:
        received: dict[int, float] = {}
        for agent in self.sims.agents.values():
            for (_, at), body in zip(agent.received, agent.bodies, strict=True):
                received.setdefault(body["github_issue_number"], at)
        return [(received[i] - self.sent[i]) * 1000 for i in issues if i in received]

    async def completed(self) -> int:
        status = (await self.api.get("/api/v1/queue/status")).json()
        return int(status["completed_tasks"])


async def paced_and_flood(url: str, pid: int, tasks: int, agents: int) -> dict[str, float]:
    """Prints the figures and returns them (``bench/peers.py`` compares them)."""
    async with (
        SimAgents(url, heartbeat_interval=5.0) as sims,
        httpx.AsyncClient(
            base_url=url,
            headers=HEADERS,
            timeout=60,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        ) as api,
    ):
        for i in range(agents):
            await sims.add(f"bench-{i:02d}", capacity=4)
        load = Load(api, sims)
        paced = 500
        for _ in range(paced):
            await load.submit()
            await asyncio.sleep(0.02)
        while await load.completed() < paced:
            await asyncio.sleep(0.1)
        lat = load.latencies_ms(range(1, paced + 1))
        figures = {"paced_p50": pct(lat, 0.5), "paced_p99": pct(lat, 0.99)}
        print(
            f"paced ({paced} tasks, one every 20 ms): created → /execute_task "
            f"p50 {pct(lat, 0.5):.1f} ms  p90 {pct(lat, 0.9):.1f} ms  p99 {pct(lat, 0.99):.1f} ms"
        )

        first = load.issue + 1
        cpu_before = cpu_seconds(pid)
        harness_before = time.process_time()
        started = time.monotonic()
        semaphore = asyncio.Semaphore(32)

        async def one() -> None:
            async with semaphore:
                await load.submit()

        await asyncio.gather(*(one() for _ in range(tasks)))
        submitted = time.monotonic() - started
        while await load.completed() < paced + tasks:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        harness = time.process_time() - harness_before
        lat = load.latencies_ms(range(first, first + tasks))
        figures["flood_per_s"] = tasks / elapsed
        figures["cpu_ms_per_task"] = cpu / tasks * 1000
        print(
            f"flood ({tasks} tasks, 32 submitters): submitted in {submitted:.1f} s, all "
            f"completed in {elapsed:.1f} s → {tasks / elapsed:.0f} completed tasks/s "
            f"({tasks / submitted:.0f} submitted/s)"
        )
        print(
            f"flood: created → /execute_task p50 {pct(lat, 0.5):.1f} ms  "
            f"p90 {pct(lat, 0.9):.1f} ms  p99 {pct(lat, 0.99):.1f} ms  "
            f"(mean {statistics.fmean(lat):.1f} ms)"
        )
        print(
            f"flood: coordinator CPU {cpu:.1f} s = {cpu / tasks * 1000:.2f} ms per completed task "
            "(create, claim, push, accept, result; user+system)"
        )
        print(
            f"flood: this process (submitters and simulated agents) CPU {harness:.1f} s = "
            f"{harness / elapsed:.0%} of a core (near 100 %: the harness, not the "
            "coordinator, sets the pace)"
        )
        now, peak = rss_mb(pid)
        figures["rss_mb"] = peak
        print(f"coordinator RSS: {now:.0f} MB now, {peak:.0f} MB peak (all its processes)")
        return figures


def _buckets(metrics_text: str, name: str) -> list[tuple[float, float]]:
    buckets: list[tuple[float, float]] = []
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    return buckets


def histogram_mean(after: str, before: str, name: str) -> float:
    """The mean of a Prometheus histogram's observations between two scrapes."""

    def value(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(f"{name}_{series} "):
                return float(line.split()[-1])
        return 0.0

    count = value(after, "count") - value(before, "count")
    return (value(after, "sum") - value(before, "sum")) / count if count else float("nan")


def histogram_quantile(after: str, before: str, name: str, q: float) -> tuple[float, float]:
    """The ``q`` quantile of a Prometheus histogram between two scrapes, as the upper
    bound of its bucket, and the number of observations."""
    earlier = dict(_buckets(before, name))
    buckets = [(bound, count - earlier.get(bound, 0.0)) for bound, count in _buckets(after, name)]
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound, total
    return float("nan"), total


async def backlog(url: str, pid: int, agents: int, backlog_tasks: int, seconds: float) -> None:
    """``agents`` agents draining a backlog of ``backlog_tasks``: the coordinator's RSS and
    the claim transaction's p50/p99 (``claude_claim_duration_seconds``) while it does."""
    async with (
        SimAgents(url, heartbeat_interval=10.0) as sims,
        httpx.AsyncClient(
            base_url=url,
            headers=HEADERS,
            timeout=60,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        ) as api,
    ):
        for i in range(agents):
            await sims.add(f"backlog-{i:03d}", behaviour="hold", capacity=1)
        load = Load(api, sims)
        semaphore = asyncio.Semaphore(32)

        async def one() -> None:
            async with semaphore:
                await load.submit()

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(backlog_tasks)))
        print(
            f"backlog: {backlog_tasks} tasks submitted in {time.monotonic() - started:.1f} s; "
            f"{agents} agents",
            file=sys.stderr,
        )
        before = (await api.get("/metrics")).text
        # agents finish what they hold and take the next, with the backlog still queued
        deadline = time.monotonic() + seconds
        finished = 0
        while time.monotonic() < deadline:
            for agent_id, agent in sims.agents.items():
                for run_id in list(agent.held):
                    await sims.finish(agent_id, run_id)
                    finished += 1
            await asyncio.sleep(0.05)
        text = (await api.get("/metrics")).text
        queued = (await api.get("/api/v1/queue/status")).json()["pending_tasks"]
        now, peak = rss_mb(pid)
        name = "claude_claim_duration_seconds"
        p50, count = histogram_quantile(text, before, name, 0.5)
        p99, _ = histogram_quantile(text, before, name, 0.99)
        print(
            f"backlog ({agents} agents, {backlog_tasks} tasks, {queued} still queued): "
            f"{finished} runs finished in {seconds:.0f} s; {count:.0f} claims, "
            f"claim mean {histogram_mean(text, before, name) * 1000:.1f} ms, "
            f"p50 ≤ {p50 * 1000:.0f} ms, p99 ≤ {p99 * 1000:.0f} ms (bucket bounds); "
            f"coordinator RSS {now:.0f} MB now, {peak:.0f} MB peak"
        )


async def death_to_requeue(url: str) -> None:
    """Default settings: heartbeats every 10 s, RUN_LEASE_SECONDS 30, sweep every 2 s."""
    async with (
        SimAgents(url, heartbeat_interval=10.0) as sims,
        httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as api,
    ):
        await sims.add("dies", behaviour="hold", capacity=1)
        response = await api.post(
            "/api/v1/tasks",
            json={
                "title": "death",
                "github_repository": "bench/death",
                "github_issue_number": 1,
                "requirements": [],
            },
        )
        task_id = response.json()["id"]
        while not sims.agents["dies"].held:
            await asyncio.sleep(0.05)
        # die right after a heartbeat: the worst case for the lease
        await sims.heartbeat(sims.agents["dies"])
        died = time.monotonic()
        sims.vanish("dies")
        while True:
            runs = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
            if runs and runs[0]["status"] == "lost":
                break
            await asyncio.sleep(0.1)
        print(
            f"agent death → run lost and task requeued: {time.monotonic() - died:.1f} s "
            "(worst case: died just after a heartbeat; RUN_LEASE_SECONDS=30, sweep 2 s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--skip-death", action="store_true", help="skip the 30 s lease measurement")
    parser.add_argument("--workers", type=int, default=1, help="coordinator worker processes")
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="instead: this many queued tasks drained by --agents agents (RSS, claim p99)",
    )
    parser.add_argument("--seconds", type=float, default=20, help="how long to drain the backlog")
    args = parser.parse_args()
    if args.backlog:
        run_backlog(args)
        return
    databases.make_pg_template()
    name, url = databases.new_pg_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "coordinator.log"
            with coordinator_process(
                url, log=log, **bench_settings(args.workers, args.agents)
            ) as proc:
                asyncio.run(paced_and_flood(proc.url, proc.pid, args.tasks, args.agents))
            if not args.skip_death:
                name2, url2 = databases.new_pg_database()
                try:
                    with coordinator_process(url2, log=log, LOG_LEVEL="WARNING") as proc:
                        asyncio.run(death_to_requeue(proc.url))
                finally:
                    databases.drop_pg_database(name2)
    finally:
        databases.drop_pg_database(name)
        databases.drop_pg_template()


def run_backlog(args: argparse.Namespace) -> None:
    databases.make_pg_template()
    name, url = databases.new_pg_database()
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            coordinator_process(
                url,
                log=Path(tmp) / "coordinator.log",
                **bench_settings(args.workers, args.agents),
            ) as proc,
        ):
            asyncio.run(backlog(proc.url, proc.pid, args.agents, args.backlog, args.seconds))
    finally:
        databases.drop_pg_database(name)
        databases.drop_pg_template()


if __name__ == "__main__":
    main()
