"""Faults injected into a real cluster (processes, PostgreSQL, Redis, git), with the
invariants asserted and the figures printed. Settings are tightened (see FAST in
scenarios.py); bench/chaos.py runs the same scenarios at larger counts."""

from __future__ import annotations

import pytest

from tests.chaos import scenarios
from tests.chaos.conftest import report
from tests.support.chaos import Lab

pytestmark = pytest.mark.postgres


@pytest.mark.timeout(150)
async def test_agents_killed_mid_run_lose_nothing_and_deliver_once(lab: Lab) -> None:
    figures = await scenarios.agent_kill(lab, kills=3)
    report(figures)
    assert figures.faults == 3
    assert (figures.lost, figures.duplicated) == (0, 0), figures.notes


@pytest.mark.timeout(150)
async def test_a_replica_killed_in_a_burst_loses_and_doubles_no_task(lab: Lab) -> None:
    figures = await scenarios.coordinator_kill_burst(lab, tasks=150)
    report(figures)
    assert figures.faults == 1 and figures.tasks == 150
    assert (figures.lost, figures.duplicated) == (0, 0), figures.notes


@pytest.mark.timeout(120)
async def test_postgres_restarted_under_load_stops_no_run(lab: Lab) -> None:
    figures = await scenarios.postgres_restart(lab)
    report(figures)
    assert figures.faults == 1
    assert (figures.lost, figures.duplicated, figures.stopped) == (0, 0, 0), figures.notes


@pytest.mark.timeout(180)
async def test_an_agent_partitioned_past_its_lease_does_not_deliver_twice(lab: Lab) -> None:
    figures = await scenarios.partition(lab)
    report(figures)
    assert figures.faults == 1
    assert (figures.lost, figures.duplicated) == (0, 0), figures.notes


@pytest.mark.parametrize("mode", ["pause", "kill"])
@pytest.mark.timeout(120)
async def test_runs_in_flight_deliver_once_after_the_coordinator_returns(
    lab: Lab, mode: str
) -> None:
    figures = await scenarios.coordinator_stopped(lab, mode=mode)
    report(figures)
    assert (figures.lost, figures.duplicated, figures.stopped) == (0, 0, 0), figures.notes


@pytest.mark.timeout(120)
async def test_redis_down_degrades_dispatch_and_live_logs_and_they_come_back(lab: Lab) -> None:
    figures = await scenarios.redis_down(lab)
    report(figures)
    assert (figures.lost, figures.duplicated) == (0, 0), figures.notes
    before, after = figures.live_log["before"], figures.live_log["after"]
    assert before is not None and before < 1.5, figures.notes
    assert after is not None and after < 1.5, f"the live log did not come back: {figures.notes}"
    assert figures.recovery, figures.notes
