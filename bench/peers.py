"""Peers benchmark: claude-cluster's dispatch beside procrastinate on the same PostgreSQL.

In one run, minutes apart on the same machine and server:

1. claude-cluster: ``bench/dispatch.py``'s workload (a coordinator process, simulated
   agents over real HTTP, no-op work): paced (one task every 20 ms) created →
   ``/execute_task`` p50/p99, and completed tasks/s under a flood;
2. procrastinate (``uv sync --group bench``): the same counts as no-op jobs, two worker
   processes × 4 concurrency, listen/notify on: paced deferred → job started p50/p99, and
   completed jobs/s under the same flood (32 concurrent submitters).

Prints both and the ratio ours / theirs. Numbers, not assertions (bench/README.md).

Run: ``uv run --group bench python bench/peers.py [--tasks 5000] [--agents 50] [--runs 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import procrastinate  # noqa: E402

#: set for the worker processes: where the jobs are, and where they note when they started
PG_ENV, LOG_ENV = "PEERS_PG_URL", "PEERS_LATENCY_FILE"
PACED = 500

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get(PG_ENV, "")),
)


@app.task(name="noop")
async def noop(issue: int, sent: float) -> None:
    """The no-op job: note how long after its deferral it started."""
    with open(os.environ[LOG_ENV], "a") as out:  # noqa: ASYNC230 (one short line)
        out.write(f"{issue} {time.time() - sent:.6f}\n")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latencies(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        issue, seconds = line.split()
        out[int(issue)] = float(seconds) * 1000
    return out


async def apply_schema(url: str) -> None:
    peers = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    async with peers.open_async():
        await peers.schema_manager.apply_schema_async()


async def load(url: str, log: Path, tasks: int, label: str) -> dict[str, float]:
    defer_app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    async with defer_app.open_async():
        job = defer_app.configure_task("noop")
        for issue in range(1, PACED + 1):
            await job.defer_async(issue=issue, sent=time.time())
            await asyncio.sleep(0.02)
        while len(latencies(log)) < PACED:
            await asyncio.sleep(0.1)
        paced = list(latencies(log).values())
        figures = {"paced_p50": pct(paced, 0.5), "paced_p99": pct(paced, 0.99)}
        print(
            f"procrastinate paced ({PACED} jobs, one every 20 ms): deferred → started "
            f"p50 {figures['paced_p50']:.1f} ms  p99 {figures['paced_p99']:.1f} ms"
        )
        semaphore = asyncio.Semaphore(32)

        async def one(issue: int) -> None:
            async with semaphore:
                await job.defer_async(issue=issue, sent=time.time())

        started = time.monotonic()
        await asyncio.gather(*(one(PACED + 1 + i) for i in range(tasks)))
        submitted = time.monotonic() - started
        while len(latencies(log)) < PACED + tasks:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
    figures["flood_per_s"] = tasks / elapsed
    print(
        f"procrastinate flood ({tasks} jobs, 32 submitters, {label}): submitted in "
        f"{submitted:.1f} s, all done in {elapsed:.1f} s → "
        f"{figures['flood_per_s']:.0f} completed jobs/s"
    )
    return figures


def procrastinate_run(url: str, tasks: int, workers: int, concurrency: int) -> dict[str, float]:
    """``workers`` worker processes × ``concurrency`` on a fresh database."""
    asyncio.run(apply_schema(url))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "started.txt"
        env = {**os.environ, PG_ENV: url, LOG_ENV: str(log), "PYTHONPATH": str(HERE)}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "procrastinate",
                    "--app=peers.app",
                    "--log-level=warning",
                    "worker",
                    f"--concurrency={concurrency}",
                ],
                env=env,
                start_new_session=True,
            )
            for _ in range(workers)
        ]
        try:
            time.sleep(2.0)  # the workers connect and LISTEN
            label = f"{workers} workers × {concurrency}"
            return asyncio.run(load(url, log, tasks, label))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def main() -> None:
    from dispatch import bench_settings, paced_and_flood
    from tests.support import databases
    from tests.support.processes import coordinator_process

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="coordinator worker processes")
    parser.add_argument("--runs", type=int, default=1, help="repeat both, interleaved")
    args = parser.parse_args()
    databases.make_pg_template()
    try:
        for run in range(1, args.runs + 1):
            print(f"--- run {run} of {args.runs}")
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
                    ours = asyncio.run(paced_and_flood(proc.url, proc.pid, args.tasks, args.agents))
            finally:
                databases.drop_pg_database(name)
            name, url = databases.new_empty_pg_database()
            try:
                theirs = procrastinate_run(url, args.tasks, 2, 4)
            finally:
                databases.drop_pg_database(name)
            print(
                f"ratio ours/procrastinate: flood throughput "
                f"{ours['flood_per_s'] / theirs['flood_per_s']:.2f}× "
                f"({ours['flood_per_s']:.0f} vs {theirs['flood_per_s']:.0f} /s); paced p50 "
                f"{ours['paced_p50']:.1f} vs {theirs['paced_p50']:.1f} ms, p99 "
                f"{ours['paced_p99']:.1f} vs {theirs['paced_p99']:.1f} ms"
            )
    finally:
        databases.drop_pg_template()


if __name__ == "__main__":
    main()
