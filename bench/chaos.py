"""Chaos benchmark: the scenarios of tests/chaos at larger counts, one table.

Real coordinator and agent processes (the ``command`` runner against local git
repositories) on a PostgreSQL of the benchmark's own (initdb + pg_ctl in a temporary
directory), a Redis of its own, and the faults of tests/chaos/scenarios.py: kill -9,
SIGSTOP, a PostgreSQL restart, Redis killed, a TCP proxy that cuts an agent off. Prints,
per scenario: faults injected, tasks, lost, duplicated, recovery time p50/p99 (what
"recovery" means is said per scenario in scenarios.py), and the settings used.

Run: ``uv run python bench/chaos.py [--only NAME ...] [--list]``.
Numbers, not assertions: see bench/README.md (tests/chaos asserts the invariants).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos import scenarios
from tests.chaos.webhooks import webhook_burst
from tests.support.chaos import Figures, Lab, PrivatePostgres, pct

Scenario = Callable[[Lab], Awaitable[Figures]]

#: name → the scenario at bench scale
SCENARIOS: dict[str, Scenario] = {
    "agent-kill": lambda lab: scenarios.agent_kill(lab, kills=20, load_every=0.7),
    "coordinator-kill": lambda lab: scenarios.coordinator_kill_burst(
        lab, tasks=1000, agents=20, settings={**scenarios.FAST, "MAX_AGENTS": "25"}
    ),
    "postgres-restart": lambda lab: scenarios.postgres_restart(lab, restarts=3, tasks=30),
    "redis-down": lambda lab: scenarios.redis_down(lab, down_seconds=60, after_seconds=10),
    "coordinator-stopped": lambda lab: scenarios.coordinator_stopped(
        lab, mode="pause", down_seconds=120, tasks=6
    ),
    "coordinator-restarted": lambda lab: scenarios.coordinator_stopped(
        lab, mode="kill", down_seconds=120, tasks=6
    ),
    "partition": lambda lab: scenarios.partition(lab, partitions=3),
    # the delivery lease at its default (60 s): what a crash costs an event in flight
    "webhooks": lambda lab: webhook_burst(lab, deliveries=500, settings=scenarios.FAST),
}


async def run(names: list[str]) -> list[tuple[Figures | None, str, float]]:
    pg = PrivatePostgres()
    pg.start()
    results: list[tuple[Figures | None, str, float]] = []
    try:
        for name in names:
            root = Path(tempfile.mkdtemp(prefix="cc-chaos-bench-"))
            lab = Lab(root, await pg.new_database(), pg)
            started = time.monotonic()
            print(f"{name} …", file=sys.stderr, flush=True)
            try:
                results.append((await SCENARIOS[name](lab), "", time.monotonic() - started))
            except Exception as exc:  # a scenario that breaks is a row, not the end
                results.append((None, f"{name}: {type(exc).__name__}: {exc}", 0.0))
            finally:
                await lab.aclose()
                shutil.rmtree(root, ignore_errors=True)
            print(f"{name} done", file=sys.stderr, flush=True)
    finally:
        pg.close()
    return results


def table(results: list[tuple[Figures | None, str, float]]) -> None:
    header = ("scenario", "faults", "tasks", "lost", "duplicated", "recovery p50", "p99", "took")
    rows = []
    for figures, error, took in results:
        if figures is None:
            rows.append((error, "-", "-", "-", "-", "-", "-", "-"))
            continue
        p50, p99 = pct(figures.recovery, 0.5), pct(figures.recovery, 0.99)
        rows.append((
            figures.scenario, str(figures.faults), str(figures.tasks), str(figures.lost),
            str(figures.duplicated), "-" if p50 is None else f"{p50:.1f} s",
            "-" if p99 is None else f"{p99:.1f} s", f"{took:.0f} s",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print()
    for figures, _, _ in results:
        if figures is not None:
            print(f"- {figures.line()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="these scenarios")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return
    table(asyncio.run(run(args.only or list(SCENARIOS))))


if __name__ == "__main__":
    main()
