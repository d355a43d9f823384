"""Dashboard benchmark: what open dashboard tabs cost the coordinator.

A real coordinator process on SQLite (the embedded default) with 300 tasks and 5
simulated agents, one of which holds a run and reports events into it. Prints:

- the coordinator's CPU while idle (agents heartbeating, nobody watching);
- the same with N open tabs (default 10): each tab is one SSE stream on the running task
  plus the overview's poll every 5 s (what ``dashboard.js`` does), while the run reports
  20 events/s; and how long an event takes from the agent's report to the tabs;
- requests/s of ``/overview/live``, ``/tasks`` and a task page with 4 clients at once.

Run: ``uv run python bench/dashboard.py [--tabs 10] [--seconds 20]``.
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
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def cpu_share(pid: int, seconds: float) -> float:
    before, start = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - start) * 100


async def tab(url: str, task_id: int, stop: asyncio.Event, seen: dict[str, float]) -> int:
    """One open task tab: its event stream, and the overview poll every 5 s."""
    received = 0
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=None) as client:

        async def poll() -> None:
            while not stop.is_set():
                (await client.get("/overview/live")).raise_for_status()
                try:
                    await asyncio.wait_for(stop.wait(), 5)
                except TimeoutError:
                    pass

        poller = asyncio.create_task(poll())
        try:
            async with client.stream("GET", f"/tasks/{task_id}/stream?after=0") as stream:
                async for line in stream.aiter_lines():
                    if stop.is_set():
                        break
                    if line.startswith("data:") and "bench-marker-" in line:
                        marker = line.split("bench-marker-", 1)[1].split("<", 1)[0].strip()
                        seen.setdefault(marker, time.monotonic())
                        received += 1
        finally:
            poller.cancel()
    return received


async def throughput(url: str, path: str, seconds: float = 5.0, clients: int = 4) -> float:
    done = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                (await client.get(path)).raise_for_status()
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.monotonic() - started)


async def main(url: str, pid: int, tabs: int, seconds: float) -> None:
    async with (
        SimAgents(url, heartbeat_interval=2.0) as sims,
        httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as api,
    ):
        await sims.add("bench-hold", behaviour="hold", capacity=1, specialties=["bench"])
        for i in range(4):
            await sims.add(f"bench-{i}", behaviour="complete")
        watched = (
            await api.post(
                "/api/v1/tasks",
                json={
                    "title": "watched",
                    "github_repository": "bench/app",
                    "github_issue_number": 1,
                    "requirements": ["bench"],
                },
            )
        ).json()["id"]
        for n in range(2, 301):
            await api.post(
                "/api/v1/tasks",
                json={
                    "title": f"bench {n}",
                    "github_repository": f"bench/repo-{n % 7}",
                    "github_issue_number": n,
                    "labels": ["bench"],
                },
            )
        while not sims.agents["bench-hold"].held:
            await asyncio.sleep(0.05)
        run_id = next(iter(sims.agents["bench-hold"].held))
        await asyncio.sleep(2)  # the completions settle

        idle = await cpu_share(pid, seconds)

        stop = asyncio.Event()
        seen: dict[str, float] = {}
        sent: dict[str, float] = {}
        watchers = [asyncio.create_task(tab(url, watched, stop, seen)) for _ in range(tabs)]
        await asyncio.sleep(1)  # the streams connect

        async def report() -> None:
            seq = 0
            while not stop.is_set():
                marker = str(seq)
                sent[marker] = time.monotonic()
                await sims.report(
                    "bench-hold",
                    run_id,
                    [{"kind": "assistant_text", "message": f"bench-marker-{marker}"}],
                    first_seq=seq,
                )
                seq += 1
                await asyncio.sleep(0.05)

        async def report_unwatched() -> None:
            seq = 1_000_000
            while not stop.is_set():
                await sims.report(
                    "bench-hold", run_id, [{"kind": "output", "message": "x"}], first_seq=seq
                )
                seq += 1
                await asyncio.sleep(0.05)

        reporter = asyncio.create_task(report())
        watching = await cpu_share(pid, seconds)
        stop.set()
        await reporter
        stop.clear()
        unwatched_reporter = asyncio.create_task(report_unwatched())
        unwatched = await cpu_share(pid, seconds)
        stop.set()
        await unwatched_reporter
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        delays = [(seen[m] - sent[m]) * 1000 for m in sent if m in seen]

        rates = {
            path: await throughput(url, path)
            for path in (
                "/overview/live",
                "/tasks",
                "/tasks?label=bench&page=3",
                f"/tasks/{watched}",
            )
        }

    print(f"coordinator CPU, idle (5 agents heartbeating):          {idle:5.1f} %")
    print(f"coordinator CPU, no tab, 20 events/s:                  {unwatched:5.1f} %")
    print(f"coordinator CPU, {tabs} tabs (SSE + 5 s overview poll), 20 events/s: {watching:5.1f} %")
    if delays:
        print(
            f"event report → first tab: p50 {statistics.median(delays):.0f} ms, "
            f"max {max(delays):.0f} ms ({len(delays)} events)"
        )
    for path, rate in rates.items():
        print(f"{path:32s} {rate:7.1f} requests/s (4 clients)")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tabs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = databases.new_sqlite_database(Path(tmp))
        with coordinator_process(url, log=Path(tmp) / "coordinator.log") as coordinator:
            asyncio.run(main(coordinator.url, coordinator.pid, args.tabs, args.seconds))


if __name__ == "__main__":
    run()
