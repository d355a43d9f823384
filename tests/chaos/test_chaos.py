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
