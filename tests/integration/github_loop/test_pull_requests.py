"""Runs, pull requests and review feedback: the real coordinator, the fake GitHub and
simulated agents that open their pull request on the fake as the real agent does."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from claude_cluster.github import PullRequestInfo, TestResults, Usage, render_pr_body
from tests.integration.github_loop.conftest import REPO, TOKEN, Loop
from tests.support.sim_agents import SimAgent, SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def next_run(agent: SimAgent, after: int = 0) -> tuple[int, dict[str, Any]]:
    """The first run the agent holds with an id above ``after``."""

    async def probe() -> tuple[int, dict[str, Any]] | None:
        fresh = sorted(r for r in agent.held if r > after)
        return (fresh[0], agent.held[fresh[0]]) if fresh else None

    return await eventually(probe, timeout=10)


async def open_pr(loop: Loop, task_id: int, issue: int, branch: str) -> dict[str, Any]:
    """What the agent's delivery does: open the PR with the task's body, as its token."""
    body = render_pr_body(
        PullRequestInfo(
            task_id=task_id,
            issue_number=issue,
            issue_title="Crash",
            summary="Fixed it",
            tests=TestResults("pytest -q", passed=3, failed=0),
            usage=Usage(cost_usd=0.42),
            branch=branch,
        )
    )
    sent = len(loop.fake.deliveries)
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{loop.fake.url}/repos/{REPO}/pulls",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"title": "Fix", "head": branch, "base": "main", "body": body},
        )
    assert answer.status_code == 201, answer.text
    pr: dict[str, Any] = answer.json()
    pr["delivery"] = (await loop.delivery_after(sent)).id
    return pr


async def labelled_task(loop: Loop, title: str = "Crash") -> tuple[int, int]:
    issue = loop.fake.create_issue(REPO, title, "It crashes", deliver=False)
    await loop.act(loop.fake.label_issue, REPO, issue["number"], "claude-code")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.task_id is not None, row.reason
    return row.task_id, int(issue["number"])


def result(pr: dict[str, Any] | None, branch: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "branch": branch,
        "session_id": "session-1",
        "tests_command": "pytest -q",
        "tests_passed": 3,
        "tests_failed": 0,
        "tests_ok": True,
        "cost_usd": 0.42,
        "input_tokens": 1200,
        "output_tokens": 300,
        **extra,
    }
    if pr is not None:
        body.update(pr_number=pr["number"], pr_url=pr["html_url"])
    return body


def metric(text: str, name: str) -> float:
    """A sample's value in Prometheus text (the registry is shared by every test)."""
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def test_run_pull_request_review_follow_up_and_merge(loop: Loop) -> None:
    prs_before = metric((await loop.api.get("/metrics")).text, "claude_github_prs_created_total")
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, request = await next_run(agent)
        assert "git_token" not in request and request["open_pull_request"] is True
        token = await sims.git_token("a1", run_id)  # asked for at delivery, not dispatched
        assert token.status_code == 200 and token.json()["token"] == TOKEN
        assert request["repository_url"] == f"https://github.com/{REPO}.git"
        assert request["branch"] is None and request["feedback"] is None
        await loop.comments(issue, "- ⏳ Workspace on `a1`")

        branch = f"claude/issue-{issue}-crash"
        pr = await open_pr(loop, task_id, issue, branch)
        # the run has not recorded the number yet: its result does, not the webhook
        opened = await loop.delivery(pr["delivery"])
        assert opened.status == "ignored" and opened.task_id is None
        await sims.finish("a1", run_id, **result(pr, branch))
        task = await loop.task(task_id, "review")
        assert task["github_pr_number"] == pr["number"]
        (done,) = await loop.comments(issue, "opened a pull request")
        assert pr["html_url"] in done and "3 passed, 0 failed" in done and "$0.4200" in done
        # one comment per task, edited as it moved, never a trail of comments
        ours = [c for c in loop.fake.comments(REPO, issue) if "Task ID:" in c["body"]]
        assert len(ours) == 1
        edits = [body for cid, body in loop.fake.comment_edits if cid == ours[0]["id"]]
        assert edits and edits[-1] == done  # the same comment, edited to the result

        await loop.act(
            loop.fake.submit_review, REPO, pr["number"], "changes_requested", "Add a test"
        )
        follow_up, request = await next_run(agent, after=run_id)
        assert request["branch"] == branch
        assert "Add a test" in request["feedback"]
        assert request["resume_session_id"] == "session-1"
        await loop.comments(pr["number"], "follow-up run on this branch is queued")
        await sims.finish("a1", follow_up, **result(pr, branch))
        await loop.task(task_id, "review")

        await loop.act(loop.fake.merge_pull_request, REPO, pr["number"])
        merged = await loop.delivery(loop.last_delivery().id)
        assert merged.status == "processed", merged.reason
        await loop.task(task_id, "completed")
        await loop.comments(issue, f"#{pr['number']} was merged")
        assert loop.fake.issue(REPO, issue)["state"] == "closed"
        metrics = (await loop.api.get("/metrics")).text
        assert metric(metrics, "claude_github_prs_created_total") == prs_before + 1
        comments = "POST /repos/{owner}/{repo}/issues/{number}/comments"
        assert f'claude_github_api_calls_total{{endpoint="{comments}"' in metrics


async def test_feedback_during_a_run_waits_for_it(loop: Loop) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, _ = await next_run(agent)
        branch = f"claude/issue-{issue}-crash"
        pr = await open_pr(loop, task_id, issue, branch)
        await sims.finish("a1", run_id, **result(pr, branch))
        await loop.task(task_id, "review")
        await loop.act(loop.fake.submit_review, REPO, pr["number"], "changes_requested", "More")
        follow_up, _ = await next_run(agent, after=run_id)
        # the follow-up is running: a comment must not start another run, it waits
        await loop.act(loop.fake.comment, REPO, pr["number"], "@claude please also handle None")
        row = await loop.delivery(loop.last_delivery().id)
        assert row.status == "processed" and row.reason == "feedback deferred"
        await loop.act(loop.fake.comment, REPO, pr["number"], "looks fine so far")  # no mention
        assert (await loop.delivery(loop.last_delivery().id)).status == "ignored"
        assert sorted(agent.held) == [follow_up]

        await sims.finish("a1", follow_up, **result(pr, branch))
        third, request = await next_run(agent, after=follow_up)
        assert "please also handle None" in request["feedback"]
        assert request["branch"] == branch
        await sims.finish("a1", third, **result(pr, branch))
        await loop.task(task_id, "review")


async def test_closed_unmerged_fails_and_failures_are_explained(loop: Loop) -> None:
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        task_id, issue = await labelled_task(loop)
        run_id, _ = await next_run(agent)
        branch = f"claude/issue-{issue}-crash"
        await sims.finish("a1", run_id, **result(None, branch, pr_url=None))
        # no pull request: the run delivered a branch only, the task is complete
        await loop.task(task_id, "completed")
        await loop.comments(issue, f"**Branch:** `{branch}`")

        second_task, second = await labelled_task(loop, "Second")
        run_id, _ = await next_run(agent, after=run_id)
        await sims.finish(
            "a1",
            run_id,
            succeeded=False,
            error_category="tests_failed",
            message="tests still fail after 2 fix round(s)",
            branch=f"claude/issue-{second}-second",
        )
        await loop.task(second_task, "failed")
        (failure,) = await loop.comments(second, "could not complete")
        assert "tests still fail" in failure and f"claude/issue-{second}-second" in failure

        third_task, third = await labelled_task(loop, "Third")
        run_id, _ = await next_run(agent, after=run_id)
        branch = f"claude/issue-{third}-third"
        pr = await open_pr(loop, third_task, third, branch)
        await sims.finish("a1", run_id, **result(pr, branch))
        await loop.task(third_task, "review")
        await loop.act(loop.fake.close_pull_request, REPO, pr["number"])
        task = await loop.task(third_task, "failed")
        assert "closed without merging" in task["error_message"]


async def test_pull_request_text_never_names_a_task(loop: Loop) -> None:
    """``Closes #n`` and ``Task ID: n`` in a body are text anyone can write: only the
    number a run recorded (with the task's repository and branch) ties a PR to a task."""
    task_id, issue = await labelled_task(loop)
    async with httpx.AsyncClient(timeout=10) as client:

        async def pr(branch: str, body: str) -> str:
            sent = len(loop.fake.deliveries)
            answer = await client.post(
                f"{loop.fake.url}/repos/{REPO}/pulls",
                headers={"Authorization": f"Bearer {TOKEN}"},
                json={"title": "PR", "head": branch, "base": "main", "body": body},
            )
            assert answer.status_code == 201
            return (await loop.delivery_after(sent)).id

        closes = await pr("human/a", f"Closes #{task_id}")
        claims = await pr(f"claude/issue-{issue}-crash", f"Closes #{issue}\n\nTask ID: {task_id}")
    for delivery in (closes, claims):
        row = await loop.delivery(delivery)
        assert (row.status, row.task_id) == ("ignored", None)
    assert (await loop.task(task_id))["github_pr_number"] is None
