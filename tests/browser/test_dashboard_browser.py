"""The dashboard in Chromium, used as a person uses it: sign in, watch a run's log grow,
cancel a task, drain an agent, filter and page the tasks. Assertions are on what the page
renders; every page is screenshotted (see conftest)."""

from __future__ import annotations

import re
import time
from typing import Any

from tests.browser.conftest import Cluster, shoot, sign_in

TASK = {
    "title": "Fix the flaky retry test",
    "description": "The retry test fails one run in five.",
    "github_repository": "acme/app",
    "github_issue_number": 42,
    "labels": ["bug"],
    "requirements": ["python"],
}

RUN_EVENTS: list[dict[str, Any]] = [
    {"kind": "phase", "message": "running the agent", "data": {"phase": "agent"}},
    {"kind": "assistant_text", "message": "I'll look at the retry test first."},
    {
        "kind": "tool_use",
        "message": "Bash",
        "data": {"name": "Bash", "input": {"command": "pytest -q tests/test_retry.py"}},
    },
    {
        "kind": "tool_result",
        "message": "\n".join(f"tests/test_retry.py::test_{i} PASSED" for i in range(40)),
        "data": {"is_error": False},
    },
    {"kind": "runner_finished", "message": "done", "data": {"cost_usd": 0.12, "num_turns": 5}},
    {
        "kind": "tests",
        "message": "11 passed, 1 failed",
        "data": {"command": "pytest -q", "output_tail": "FAILED tests/test_retry.py::test_7"},
        "level": "warning",
    },
    {"kind": "phase", "message": "fix round 1 of 2", "data": {"phase": "fix", "round": 1}},
]


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _running_task(cluster: Cluster, agent: str = "alpha", issue: int = 42) -> tuple[int, int]:
    if agent not in cluster.agents.sims.agents:
        cluster.agents.run(cluster.agents.sims.add(agent, behaviour="hold", specialties=["python"]))
    with cluster.coordinator.client() as api:
        task = api.post("/api/v1/tasks", json={**TASK, "github_issue_number": issue}).json()
    _wait(lambda: cluster.agents.held(agent))
    with cluster.coordinator.client() as api:
        _wait(lambda: api.get(f"/api/v1/tasks/{task['id']}").json()["status"] == "in_progress")
    return task["id"], cluster.agents.held(agent)[0]


def test_sign_in_and_the_overview(page: Any, cluster: Cluster) -> None:
    _done, first_run = _running_task(cluster, issue=41)
    cluster.agents.run(cluster.agents.sims.finish("alpha", first_run, cost_usd=0.5))
    task_id, run_id = _running_task(cluster)
    cluster.agents.run(
        cluster.agents.sims.add(
            "beta", behaviour="hold", capacity=2, specialties=["python", "docs"]
        )
    )
    cluster.agents.run(cluster.agents.sims.report("alpha", run_id, RUN_EVENTS[4:5]))  # $0.12
    with cluster.coordinator.client() as api:
        for issue, priority in ((50, "high"), (51, "low"), (52, "low")):
            api.post(  # no agent knows rust: these wait in the queue
                "/api/v1/tasks",
                json={
                    **TASK,
                    "github_issue_number": issue,
                    "priority": priority,
                    "requirements": ["rust"],
                    "title": f"Port module {issue} to Rust",
                },
            )

    page.goto("/")
    assert page.get_by_role("heading", name="Sign in").is_visible()
    page.get_by_label("Admin token").fill("not the token")
    page.problems.expected.add((401, "/login"))
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "That is not the admin token or an API token."
    sign_in(page)

    assert page.get_by_role("heading", name="Overview").is_visible()
    queue = page.locator("table", has=page.get_by_role("columnheader", name="oldest waiting"))
    assert [r.split("\t")[:2] for r in queue.locator("tbody tr").all_inner_texts()] == [
        ["high", "1"],
        ["low", "2"],
    ]
    running = page.locator("table", has=page.get_by_role("columnheader", name="cost so far"))
    row = running.locator("tbody tr").first.inner_text()
    assert f"#{task_id}" in row and "in_progress" in row and "alpha" in row
    assert "$0.1200" in row
    agents = page.locator("table", has=page.get_by_role("columnheader", name="readiness"))
    assert "beta" in agents.inner_text() and "ready" in agents.inner_text()
    assert "100%" in agents.inner_text()  # alpha's success rate
    assert re.search(r"\d+ s ago", agents.inner_text())  # heartbeats read like speech
    chart = page.locator("svg.chart").text_content() or ""
    assert "acme/app" in chart and "$0.5000 / $0.5000" in chart
    shoot(page, "overview", phone=True)

    # the live part follows the cluster without a reload
    cluster.agents.run(cluster.agents.sims.finish("alpha", run_id, cost_usd=0.25))
    page.get_by_text("no run active").wait_for(timeout=12_000)
    assert "$0.7500 / $0.7500" in (page.locator("svg.chart").text_content() or "")


def test_watch_a_run_log_grow_live(page: Any, cluster: Cluster) -> None:
    task_id, run_id = _running_task(cluster)
    sign_in(page, f"/tasks/{task_id}")
    page.get_by_text("live", exact=True).wait_for()
    log = page.locator("#log")
    before = log.locator("li").count()

    cluster.agents.run(cluster.agents.sims.report("alpha", run_id, RUN_EVENTS))
    log.locator("li.fix").wait_for()
    assert log.locator("li").count() == before + len(RUN_EVENTS)
    assert log.locator("li.assistant").inner_text().endswith("I'll look at the retry test first.")

    tool = log.locator("li.tool")
    assert "Bash: pytest -q tests/test_retry.py" in tool.inner_text()
    assert not tool.locator("pre").is_visible()  # the input is collapsed
    tool.get_by_text("Bash: pytest -q tests/test_retry.py").click()
    assert '"command": "pytest -q tests/test_retry.py"' in tool.locator("pre").inner_text()

    result = log.locator("li.result")
    assert "test_39 PASSED" not in result.locator("pre").first.inner_text()  # cut
    result.get_by_text("show more").click()
    assert "test_39 PASSED" in result.locator("details.more pre").inner_text()
    assert "FAILED tests/test_retry.py::test_7" in log.locator("li.tests").inner_text()

    run = page.locator(f'#timeline [data-run="{run_id}"]')
    assert run.locator('[data-tally="messages"]').inner_text() == "1"
    assert run.locator('[data-tally="tools"]').inner_text() == "1"
    assert run.locator('[data-tally="fixes"]').inner_text() == "1"
    assert run.locator('[data-tally="cost"]').inner_text() == "$0.1200"
    assert run.locator('[data-tally="turns"]').inner_text() == "5"

    # more arrives: the counters and the log grow
    more = [
        {"kind": "assistant_text", "message": "The sleep is too short; fixing it."},
        {"kind": "runner_finished", "message": "done", "data": {"cost_usd": 0.05, "num_turns": 2}},
    ]
    cluster.agents.run(cluster.agents.sims.report("alpha", run_id, more, first_seq=len(RUN_EVENTS)))
    page.get_by_text("The sleep is too short").wait_for()
    assert run.locator('[data-tally="messages"]').inner_text() == "2"
    run.locator('[data-tally="turns"]', has_text="7").wait_for()  # cost and turns grow
    assert run.locator('[data-tally="cost"]').inner_text() == "$0.1700"
    shoot(page, "task-live-run", phone=True)

    # the run ends: the status and the timeline follow
    cluster.agents.run(
        cluster.agents.sims.finish(
            "alpha",
            run_id,
            cost_usd=0.31,
            num_turns=9,
            tests_command="pytest -q",
            tests_passed=12,
            tests_failed=0,
            tests_ok=True,
            fix_rounds=1,
            commit_sha="0123456789abcdef0123",
            branch="claude/issue-42",
            changed_files=["src/retry.py", "tests/test_retry.py"],
        )
    )
    page.locator("#status", has_text="completed").wait_for()
    page.locator("#timeline .badge.succeeded").wait_for()
    page.get_by_text("proof of work").click()
    proof = page.locator("#timeline dl.facts").inner_text()
    assert "pytest -q: passed (12 passed, 0 failed)" in proof
    assert "0123456789ab on claude/issue-42" in proof and "src/retry.py" in proof
    shoot(page, "task-finished")


def _progress(fix_round: int, turns: int, cost: float) -> dict[str, Any]:
    """A ``round_progress`` report as an agent sends it while a round runs."""
    data = {"fix_round": fix_round, "num_turns": turns, "cost_usd": cost, "estimate": True}
    return {"kind": "round_progress", "message": "agent round so far", "data": data}


def test_the_round_in_progress_tallies_live(page: Any, cluster: Cluster) -> None:
    task_id, run_id = _running_task(cluster)
    report = cluster.agents.sims.report
    finished = {
        "kind": "runner_finished",
        "message": "done",
        "data": {"cost_usd": 0.12, "num_turns": 5},
    }
    cluster.agents.run(report("alpha", run_id, [finished]))  # round 0: $0.12, 5 turns
    sign_in(page, f"/tasks/{task_id}")
    page.get_by_text("live", exact=True).wait_for()
    page.evaluate("window.notReloaded = true")
    # the timeline is refetched on each of the task's changes; hold those answers, so what
    # the page shows below is dashboard.js's own tally of the streamed items
    page.problems.expected.add((503, f"/tasks/{task_id}"))
    refetch = re.compile(r"/tasks/\d+\?part=timeline$")
    page.route(refetch, lambda route: route.fulfill(status=503, body="held by the test"))
    run = page.locator(f'#timeline [data-run="{run_id}"]')
    cost, turns = run.locator('[data-tally="cost"]'), run.locator('[data-tally="turns"]')
    assert (cost.inner_text(), turns.inner_text()) == ("$0.1200", "5")
    log = page.locator("#log")
    seq = 1

    def send(*events: dict[str, Any]) -> None:
        nonlocal seq
        cluster.agents.run(report("alpha", run_id, list(events), first_seq=seq))
        seq += len(events)

    # fix round 1 is running: its report shows at once, marked as an estimate
    send(_progress(1, 2, 0.04))
    cost.filter(has_text="~$0.1600").wait_for()
    assert turns.inner_text() == "7"
    assert "2 turns, ~$0.0400" in log.locator('li[data-kind="round_progress"]').last.inner_text()
    # other news leaves the estimate as it is
    send({"kind": "assistant_text", "message": "Raising the sleep to 0.5 s."})
    page.get_by_text("Raising the sleep").wait_for()
    assert (cost.inner_text(), turns.inner_text()) == ("~$0.1600", "7")
    # a newer report of the round replaces the older one: it is not added to it
    send(_progress(1, 3, 0.05))
    cost.filter(has_text="~$0.1700").wait_for()
    assert turns.inner_text() == "8"
    progress = log.locator('li[data-kind="round_progress"]')
    assert progress.count() == 1  # the log keeps the newest report too, as the store does
    assert "3 turns, ~$0.0500" in progress.inner_text()
    shoot(page, "task-round-in-progress")
    # the round ends: its own figure replaces the estimate
    send({"kind": "runner_finished", "message": "done",
          "data": {"fix_round": 1, "cost_usd": 0.0612, "num_turns": 3}})  # fmt: skip
    cost.filter(has_text=re.compile(r"^\$0\.1812$")).wait_for()
    assert turns.inner_text() == "8"
    shoot(page, "task-round-finished")
    assert page.evaluate("window.notReloaded") is True  # all of it without a reload
    page.unroute(refetch)
    page.reload()  # and the page as the server draws it agrees
    assert (cost.inner_text(), turns.inner_text()) == ("$0.1812", "8")
    assert progress.count() == 1


def test_the_overview_follows_the_round_in_progress(page: Any, cluster: Cluster) -> None:
    task_id, run_id = _running_task(cluster)
    report = cluster.agents.sims.report
    finished = {"kind": "runner_finished", "message": "done", "data": {"cost_usd": 0.12}}
    cluster.agents.run(report("alpha", run_id, [finished]))
    sign_in(page)
    page.evaluate("window.notReloaded = true")
    running = page.locator("table", has=page.get_by_role("columnheader", name="cost so far"))
    row = running.locator("tbody tr", has=page.get_by_role("link", name=f"#{task_id}"))
    assert row.locator("td").nth(4).inner_text() == "$0.1200"
    cluster.agents.run(report("alpha", run_id, [_progress(1, 2, 0.04)], first_seq=1))
    row.locator("td", has_text=re.compile(r"^~\$0\.1600$")).wait_for(timeout=12_000)
    shoot(page, "overview-round-in-progress")
    done = {"fix_round": 1, "cost_usd": 0.0612, "num_turns": 3}
    cluster.agents.run(report("alpha", run_id, [{**finished, "data": done}], first_seq=2))
    row.locator("td", has_text=re.compile(r"^\$0\.1812$")).wait_for(timeout=12_000)
    assert page.evaluate("window.notReloaded") is True


def test_cancel_a_task_with_the_keyboard(page: Any, cluster: Cluster) -> None:
    task_id, _run_id = _running_task(cluster)
    sign_in(page, f"/tasks/{task_id}")
    page.get_by_text("Cancel task…").focus()
    page.keyboard.press("Enter")  # the disclosure opens from the keyboard
    button = page.get_by_role("button", name="Cancel task")
    button.focus()
    page.keyboard.press("Enter")  # the confirmation box is required: nothing is sent
    assert page.url.endswith(f"/tasks/{task_id}")
    assert page.locator("#status").inner_text() == "in_progress"
    page.get_by_label(f"yes, cancel task {task_id} and stop its run").focus()
    page.keyboard.press("Space")
    button.focus()
    page.keyboard.press("Enter")
    page.get_by_role("status").filter(has_text="cancelled").wait_for()
    assert page.locator("#status").inner_text() == "cancelled"
    _wait(lambda: not cluster.agents.held("alpha"))  # the agent was told to stop
    page.get_by_text("Cancel task…").click()
    assert page.get_by_role("button", name="Cancel task").is_disabled()


def test_drain_and_undrain_an_agent(page: Any, cluster: Cluster) -> None:
    task_id, _run_id = _running_task(cluster)
    sign_in(page)
    page.get_by_role("link", name="alpha").first.click()
    assert page.get_by_role("heading", name="Agent alpha").is_visible()
    assert page.get_by_role("link", name=f"#{task_id}").is_visible()
    page.get_by_text("Drain agent…").click()
    page.get_by_label("yes, let alpha finish its runs and take no new ones").check()
    page.get_by_role("button", name="Drain agent").click()
    assert page.get_by_role("status").filter(has_text="draining").is_visible()
    assert page.get_by_text("draining: finishes its runs, takes no new ones").is_visible()
    shoot(page, "agent", phone=True)
    with cluster.coordinator.client() as api:
        assert api.get("/api/v1/agents/alpha").json()["draining"] is True
    page.get_by_role("button", name="Undrain: take work again").click()
    assert page.get_by_role("status").filter(has_text="takes work again").is_visible()
    with cluster.coordinator.client() as api:
        assert api.get("/api/v1/agents/alpha").json()["draining"] is False


def test_filter_and_page_the_tasks(page: Any, cluster: Cluster) -> None:
    with cluster.coordinator.client() as api:
        for n in range(1, 31):
            api.post(
                "/api/v1/tasks",
                json={
                    "title": f"Task {n}",
                    "github_repository": "acme/app" if n % 2 else "acme/lib",
                    "github_issue_number": n,
                    "labels": ["docs"] if n % 3 else ["bug"],
                },
            )
    sign_in(page, "/tasks")
    assert page.locator("#count").inner_text() == "30 tasks, page 1 of 2"
    issue = page.get_by_role("link", name="acme/lib#30")
    assert issue.get_attribute("href") == "https://github.com/acme/lib/issues/30"
    page.get_by_role("link", name="next page →").click()
    assert page.locator("#count").inner_text() == "30 tasks, page 2 of 2"
    assert page.locator("tbody tr").count() == 5
    page.get_by_label("repository").select_option("acme/lib")
    page.get_by_label("label").fill("bug")
    page.get_by_role("button", name="Filter").click()
    assert page.locator("#count").inner_text() == "5 tasks, page 1 of 1"
    titles = page.locator("tbody tr td:nth-child(10)").all_inner_texts()
    assert titles == ["Task 30", "Task 24", "Task 18", "Task 12", "Task 6"]
    page.get_by_label("order").select_option("asc")
    page.get_by_role("button", name="Filter").click()
    assert page.locator("tbody tr td:nth-child(10)").first.inner_text() == "Task 6"
    shoot(page, "tasks", phone=True)
