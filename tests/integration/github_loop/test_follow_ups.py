"""Follow-up runs meet the pull request's end and their own failure: a merge that arrives
while a follow-up is active (or still queued) completes the task and stops the run; feedback
held back during a follow-up that fails is not lost, the next follow-up carries it."""

from __future__ import annotations

import pytest

from tests.integration.github_loop.conftest import REPO, Loop
from tests.integration.github_loop.test_pull_requests import (
    labelled_task,
    next_run,
    open_pr,
    result,
)
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def _runs(loop: Loop, task_id: int) -> list[dict[str, object]]:
    runs: list[dict[str, object]] = (await loop.api.get(f"/api/v1/tasks/{task_id}/runs")).json()
    return sorted(runs, key=lambda r: int(str(r["attempt"])))


async def test_a_merge_during_a_follow_up_completes_the_task_and_stops_the_run(
    loop: Loop,
) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, _ = await next_run(agent)
        branch = f"claude/issue-{issue}-crash"
        pr = await open_pr(loop, task_id, issue, branch)
        await sims.finish("a1", run_id, **result(pr, branch))
        await loop.task(task_id, "review")
        await loop.act(loop.fake.submit_review, REPO, pr["number"], "changes_requested", "Tests")
        follow_up, _ = await next_run(agent, after=run_id)
        await sims.phase("a1", follow_up, "in_progress")
        await loop.task(task_id, "in_progress")

        await loop.act(loop.fake.merge_pull_request, REPO, pr["number"])
        merged = await loop.delivery(loop.last_delivery().id)
        assert merged.status == "processed", merged.reason
        await loop.task(task_id, "completed")
        runs = await _runs(loop, task_id)
        assert runs[-1]["id"] == follow_up and runs[-1]["status"] == "cancelled"
        # the agent was asked to stop it
        await eventually(lambda: _async(follow_up not in agent.held), timeout=10)
        assert loop.fake.issue(REPO, issue)["state"] == "closed"
        # its late result changes nothing
        late = await sims.finish("a1", follow_up, **result(pr, branch))
        assert late.json()["already_finished"] is True
        assert (await loop.task(task_id))["status"] == "completed"


async def test_a_merge_while_the_follow_up_waits_for_an_agent_completes_the_task(
    loop: Loop,
) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, _ = await next_run(agent)
        branch = f"claude/issue-{issue}-crash"
        pr = await open_pr(loop, task_id, issue, branch)
        await sims.finish("a1", run_id, **result(pr, branch))
        await loop.task(task_id, "review")
        drained = await loop.api.post("/api/v1/agents/a1/drain", json={"drain": True})
        assert drained.status_code == 200, drained.text
        await loop.act(loop.fake.submit_review, REPO, pr["number"], "changes_requested", "Tests")
        await loop.task(task_id, "queued")  # the follow-up waits: no agent takes work

        await loop.act(loop.fake.merge_pull_request, REPO, pr["number"])
        merged = await loop.delivery(loop.last_delivery().id)
        assert merged.status == "processed", merged.reason
        await loop.task(task_id, "completed")
        assert (await loop.store.get_task(task_id)).feedback is None
        await loop.api.post("/api/v1/agents/a1/drain", json={"drain": False})
        assert [r["id"] for r in await _runs(loop, task_id)] == [run_id], "no follow-up ran"
        assert loop.fake.issue(REPO, issue)["state"] == "closed"


@pytest.mark.parametrize("retryable", [False, True], ids=["fails", "retries-exhausted"])
async def test_feedback_held_during_a_failed_follow_up_goes_to_the_next_one(
    loop: Loop, retryable: bool
) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, _ = await next_run(agent)
        branch = f"claude/issue-{issue}-crash"
        pr = await open_pr(loop, task_id, issue, branch)
        await sims.finish("a1", run_id, **result(pr, branch))
        await loop.task(task_id, "review")
        await loop.act(loop.fake.submit_review, REPO, pr["number"], "changes_requested", "First")
        follow_up, _ = await next_run(agent, after=run_id)
        await loop.act(loop.fake.comment, REPO, pr["number"], "@claude also handle None")
        row = await loop.delivery(loop.last_delivery().id)
        assert row.reason == "feedback deferred"

        failure = {"succeeded": False, "branch": branch, "message": "no luck"}
        category = "timeout" if retryable else "tests_failed"
        last = follow_up
        for _ in range(loop.coordinator.settings.task_retry_attempts + 2):
            await sims.finish("a1", last, error_category=category, **failure)
            last, request = await next_run(agent, after=last)  # a retry, or the next one
            if "also handle None" in request["feedback"]:
                break
            assert retryable, "a failure without retries goes to the next follow-up at once"
            assert request["feedback"] == (await loop.store.get_task(task_id)).feedback
        # the pull request stands; the held feedback starts the next follow-up, together
        # with the feedback the failed one did not get done
        third = last
        assert "also handle None" in request["feedback"]
        assert "First" in request["feedback"]
        assert request["branch"] == branch
        await sims.finish("a1", third, **result(pr, branch))
        task = await loop.task(task_id, "review")
        assert task["github_pr_number"] == pr["number"]


async def test_a_failed_follow_up_without_new_feedback_leaves_the_pull_request_in_review(
    loop: Loop,
) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, _ = await next_run(agent)
        branch = f"claude/issue-{issue}-crash"
        pr = await open_pr(loop, task_id, issue, branch)
        await sims.finish("a1", run_id, **result(pr, branch))
        await loop.task(task_id, "review")
        await loop.act(loop.fake.submit_review, REPO, pr["number"], "changes_requested", "First")
        follow_up, _ = await next_run(agent, after=run_id)
        await sims.finish(
            "a1",
            follow_up,
            succeeded=False,
            error_category="tests_failed",
            message="no luck",
            branch=branch,
        )
        task = await loop.task(task_id, "review")
        assert task["github_pr_number"] == pr["number"]
        assert (await loop.store.get_task(task_id)).feedback is None
        assert sorted(agent.held) == [], "no run starts by itself: it would fail the same way"
        events = (await loop.api.get(f"/api/v1/tasks/{task_id}/events")).json()
        assert any(e["kind"] == "follow_up_failed" for e in events)

        # the next feedback starts a follow-up that also carries the unfinished one
        await loop.act(loop.fake.comment, REPO, pr["number"], "@claude try again, smaller")
        again, request = await next_run(agent, after=follow_up)
        assert "First" in request["feedback"] and "try again, smaller" in request["feedback"]
        await sims.finish("a1", again, **result(pr, branch))
        await loop.task(task_id, "review")


async def _async(value: object) -> object:
    return value
