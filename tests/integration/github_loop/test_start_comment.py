"""The start comment follows the agent's acceptance at once, not the next sweep."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.github_loop.conftest import Loop
from tests.integration.github_loop.test_pull_requests import labelled_task
from tests.support.sim_agents import SimAgents


@pytest.fixture
def loop_settings(loop_settings: dict[str, Any]) -> dict[str, Any]:
    # with a one-minute sweep, only the acceptance itself can post the comment in time
    return {**loop_settings, "sweep_interval": 60.0}


async def test_the_start_comment_does_not_wait_for_the_sweep(loop: Loop) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        await sims.add("a1", behaviour="hold")
        _, issue = await labelled_task(loop)
        await loop.comments(issue, "started working on this issue", timeout=10)
