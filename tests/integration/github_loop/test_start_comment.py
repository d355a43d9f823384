"""The progress comment: created when the task is queued, then edited as it moves, no
more often than the interval allows, and always to the newest state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.integration.github_loop.conftest import REPO, Loop
from tests.integration.github_loop.test_pull_requests import labelled_task
from tests.support.sim_agents import SimAgents


@pytest.fixture
def loop_settings(loop_settings: dict[str, Any]) -> dict[str, Any]:
    # with a one-minute sweep, only the changes themselves can update the comment in time
    return {**loop_settings, "sweep_interval": 60.0, "github_progress_interval": 1.0}


async def run_held_by_a1(loop: Loop, sims: SimAgents) -> tuple[int, int, int]:
    """A labelled issue's task, dispatched to agent a1, which holds its run: the task's
    id, the issue's number and the run's id, once the comment shows the workspace step."""
    agent = await sims.add("a1", behaviour="hold")
    task_id, issue = await labelled_task(loop)
    await loop.comments(issue, "- ⏳ Workspace on `a1`", timeout=10)
    return task_id, issue, next(iter(agent.held))


async def test_one_comment_follows_the_task_step_by_step(loop: Loop) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        task_id, issue, run_id = await run_held_by_a1(loop, sims)
        steps = ("workspace", "setup", "agent", "tests")
        for seq, step in enumerate(steps):
            phase = {"kind": "phase", "message": step, "data": {"phase": step}}
            await sims.report("a1", run_id, [phase], first_seq=seq)
        # the steps arrived faster than the interval: they collapse into the newest
        (body,) = await loop.comments(issue, "- ⏳ Tests on `a1`", timeout=10)
        assert body.count("✅") == 4
        await sims.finish(
            "a1",
            run_id,
            succeeded=False,
            error_category="tests_failed",
            message="tests still fail",
            branch=f"claude/issue-{issue}-x",
        )
        (final,) = await loop.comments(issue, "could not complete", timeout=10)
        assert "tests still fail" in final
        ours = [c for c in loop.fake.comments(REPO, issue) if f"Task ID: {task_id}" in c["body"]]
        assert len(ours) == 1
        edits = [body for cid, body in loop.fake.comment_edits if cid == ours[0]["id"]]
        # created, then at most one edit per step seen, each at least a second apart
        assert 2 <= len(edits) <= 6
        assert edits[-1] == final


async def test_the_comment_shows_the_baseline_then_the_tests_before_and_after(
    loop: Loop,
) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        task_id, issue, run_id = await run_held_by_a1(loop, sims)
        steps = ("workspace", "setup", "baseline")
        for seq, step in enumerate(steps):
            phase = {"kind": "phase", "message": step, "data": {"phase": step}}
            await sims.report("a1", run_id, [phase], first_seq=seq)
        await loop.comments(issue, "- ⏳ Test environment and baseline on `a1`", timeout=10)
        # the baseline's counts alone (no new step) bring the comment up to date
        counts = {"ran": True, "command": "pytest -q", "passed": 1, "failed": 2, "errors": 0}
        baseline = {
            "kind": "baseline",
            "message": "1 passed, 2 failed",
            "data": {**counts, "ok": False},
        }
        await sims.report("a1", run_id, [baseline], first_seq=len(steps))
        before = "**Tests before the run (base commit):** 1 passed, 2 failed"
        (during,) = await loop.comments(issue, before, timeout=10)
        assert "- ⏳ Test environment and baseline on `a1`" in during
        agent_step = {"kind": "phase", "message": "agent", "data": {"phase": "agent"}}
        await sims.report("a1", run_id, [agent_step], first_seq=len(steps) + 1)
        await loop.comments(issue, "- ⏳ Agent working on `a1`", timeout=10)
        await sims.finish(
            "a1",
            run_id,
            branch=f"claude/issue-{issue}-x",
            tests_command="pytest -q",
            tests_passed=3,
            tests_failed=0,
            tests_ok=True,
        )
        before_after = "**Tests (before → after):** 1 passed, 2 failed → ✅ 3 passed, 0 failed"
        (final,) = await loop.comments(issue, before_after, timeout=10)
        assert final.startswith("✅") and "Tests before the run" not in final
        ours = [c for c in loop.fake.comments(REPO, issue) if f"Task ID: {task_id}" in c["body"]]
        assert len(ours) == 1
        edits = [body for cid, body in loop.fake.comment_edits if cid == ours[0]["id"]]
        # the sequence the issue sees: the baseline first, then before → after at the end
        shown = [i for i, body in enumerate(edits) if before in body]
        assert shown and edits[-1] == final and shown[-1] < len(edits) - 1
        assert not any(before_after in body for body in edits[: shown[0]])


def agent_round(turns: int, cost: float) -> dict[str, Any]:
    """The event an agent sends when one run of the CLI (an agent round) has finished."""
    data = {"succeeded": True, "cost_usd": cost, "num_turns": turns, "fix_round": 0}
    return {"kind": "runner_finished", "message": "done", "data": data}


async def test_the_agent_step_shows_turns_and_cost_so_far_in_bounded_edits(loop: Loop) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        task_id, issue, run_id = await run_held_by_a1(loop, sims)
        agent_step = {"kind": "phase", "message": "agent", "data": {"phase": "agent"}}
        await sims.report("a1", run_id, [agent_step, agent_round(3, 0.25)])
        (ours,) = await loop.comments(issue, "- ⏳ Agent working on `a1` — 3 turns, $0.25 so far")
        comment_id = next(c["id"] for c in loop.fake.comments(REPO, issue) if c["body"] == ours)

        def edits() -> list[str]:
            return [body for cid, body in loop.fake.comment_edits if cid == comment_id]

        # twenty rounds' figures in quick succession: the comment follows them, but its
        # edits stay at least GITHUB_PROGRESS_INTERVAL (1 s here) apart
        seen, start = len(edits()), time.monotonic()
        for seq in range(2, 22):
            await sims.report("a1", run_id, [agent_round(1, 0.05)], first_seq=seq)
            await asyncio.sleep(0.05)
        await loop.comments(issue, "- ⏳ Agent working on `a1` — 23 turns, $1.25 so far")
        during = edits()[seen:]
        assert 1 <= len(during) <= (time.monotonic() - start) / 1.0 + 1
        await sims.finish("a1", run_id, cost_usd=1.25, num_turns=23)
        # the coordinator's final edit: the run's own figures replace the ones so far
        (final,) = await loop.comments(issue, "**Cost:** $1.2500 USD", timeout=10)
        assert "so far" not in final and edits()[-1] == final
        assert f"Task ID: {task_id}" in final


def round_progress(fix_round: int, turns: int, cost: float) -> dict[str, Any]:
    """The agent's report of the round in progress (its turns and estimated cost so far)."""
    data = {"fix_round": fix_round, "num_turns": turns, "cost_usd": cost, "estimate": True}
    return {"kind": "round_progress", "message": "agent round so far", "data": data}


async def test_the_round_in_progress_shows_before_it_ends_and_its_end_replaces_it(
    loop: Loop,
) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        task_id, issue, run_id = await run_held_by_a1(loop, sims)
        agent_step = {"kind": "phase", "message": "agent", "data": {"phase": "agent"}}
        await sims.report("a1", run_id, [agent_step, round_progress(0, 2, 0.0412)])
        # the first round has not ended: its estimate shows, marked as one
        await loop.comments(issue, "- ⏳ Agent working on `a1` — 2 turns, ~$0.04 so far")
        dashboard = await loop.api.get("/overview/live")
        assert "~" in dashboard.text and "$0.04" in dashboard.text
        # newer reports of the round replace the older (the table keeps only the newest)
        await sims.report("a1", run_id, [round_progress(0, 5, 0.1234)], first_seq=2)
        await loop.comments(issue, "— 5 turns, ~$0.12 so far")
        events = (await loop.api.get(f"/api/v1/tasks/{task_id}/events")).json()
        assert [e["details"]["num_turns"] for e in events if e["kind"] == "round_progress"] == [5]
        # a resent older report is not stored again
        await sims.report("a1", run_id, [round_progress(0, 2, 0.0412)], first_seq=1)
        events = (await loop.api.get(f"/api/v1/tasks/{task_id}/events")).json()
        assert [e["seq"] for e in events if e["kind"] == "round_progress"] == [2]
        # the round ends: its own figure replaces the estimate; the fix round runs on
        await sims.report("a1", run_id, [agent_round(6, 0.20)], first_seq=3)
        await loop.comments(issue, "— 6 turns, $0.20 so far")
        await sims.report("a1", run_id, [round_progress(1, 1, 0.01)], first_seq=4)
        await loop.comments(issue, "— 7 turns, ~$0.21 so far")
        page = await loop.api.get(f"/tasks/{task_id}?part=timeline")
        assert 'data-tally="turns">7<' in page.text and "~$0.2100" in page.text
        await sims.finish("a1", run_id, cost_usd=0.23, num_turns=8)
        (final,) = await loop.comments(issue, "**Cost:** $0.2300 USD", timeout=10)
        assert "so far" not in final


async def test_progress_figures_that_are_not_bounded_numbers_are_refused(loop: Loop) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        task_id, issue, run_id = await run_held_by_a1(loop, sims)
        token = sims.agents["a1"].token
        good = round_progress(0, 2, 0.04)["data"]
        attempts = {
            "cost_usd": [-1, 1e12, "1.0", "NaN", None],
            "num_turns": [-1, 2.5, True, "3", 10**12],
            "fix_round": [-1, 10**6, "0"],
            "estimate": ["yes"],
            # text riding along to reach the comment through the figures
            "note": ["**merged** see https://evil.example"],
        }
        for field, values in attempts.items():
            for value in values:
                event = {
                    "seq": 9,
                    "ts": "2026-12-04T10:00:00Z",
                    "kind": "round_progress",
                    "data": {**good, field: value},
                }
                answer = await sims._http.post(
                    f"/api/v1/runs/{run_id}/events",
                    json={"events": [event]},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert answer.status_code == 422, (field, value, answer.text)
                assert f"round_progress data.{field}" in answer.text, answer.text
        events = (await loop.api.get(f"/api/v1/tasks/{task_id}/events")).json()
        assert not [e for e in events if e["kind"] == "round_progress"]
        assert "evil.example" not in "".join(c["body"] for c in loop.fake.comments(REPO, issue))
