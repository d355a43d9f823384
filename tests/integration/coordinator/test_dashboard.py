"""The dashboard over real HTTP: sign-in, the pages, filters and pages of tasks, the
actions with their CSRF and confirmation checks, links that must not become links, and the
live log over SSE. (tests/browser/ drives the same pages in Chromium.)"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, RunningCoordinator
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

TASK = {"title": "Fix <the> bug", "github_repository": "acme/app", "github_issue_number": 3}


async def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    async def probe() -> object:
        return condition()

    await eventually(probe, timeout=timeout)


@contextmanager
def _signed_in(coordinator: RunningCoordinator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=coordinator.url, timeout=10) as browser:
        assert browser.post("/login", data={"token": ADMIN_TOKEN}).status_code == 303
        yield browser


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def test_pages_need_a_sign_in(coordinator: RunningCoordinator) -> None:
    with httpx.Client(base_url=coordinator.url) as browser:
        page = browser.get("/")
        assert page.status_code == 200
        assert 'action="/login"' in page.text
        for path in ("/tasks", "/tasks/1", "/agents/a", "/tasks/1/stream", "/overview/live"):
            assert browser.get(path).status_code == 401, path
        assert browser.post("/tasks/1/cancel", data={"confirm": "yes"}).status_code == 401
        wrong = browser.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401
        assert "not the admin token" in wrong.text


def test_sign_in_returns_only_to_a_local_page(coordinator: RunningCoordinator) -> None:
    with httpx.Client(base_url=coordinator.url) as browser:
        for target, expected in (
            ("/tasks?status=queued", "/tasks?status=queued"),
            ("https://evil.example/", "/"),
            ("//evil.example/", "/"),
            ("/\\evil.example", "/"),
        ):
            reply = browser.post("/login", data={"token": ADMIN_TOKEN, "next": target})
            assert reply.headers["location"] == expected


def test_overview_task_and_agent_pages(coordinator: RunningCoordinator, api: httpx.Client) -> None:
    task = api.post("/api/v1/tasks", json=TASK).json()
    with _signed_in(coordinator) as browser:
        cookie = browser.cookies.get("claude_cluster_session")
        assert cookie and ADMIN_TOKEN not in cookie
        overview = browser.get("/")
        assert "Queue" in overview.text and "nothing queued" not in overview.text
        assert browser.get("/overview/live").text.count("<table") >= 3
        listing = browser.get("/tasks")
        assert "Fix &lt;the&gt; bug" in listing.text  # escaped
        assert f'href="/tasks/{task["id"]}"' in listing.text
        assert 'href="https://github.com/acme/app/issues/3"' in listing.text
        page = browser.get(f"/tasks/{task['id']}")
        assert page.status_code == 200
        assert "queued with priority" in page.text
        missing = browser.get("/tasks/999")
        assert missing.status_code == 404 and "task 999" in missing.text and "<html" in missing.text
        assert browser.get("/agents/nobody").status_code == 404
        assert browser.get("/static/dashboard.js").status_code == 200
        browser.post("/logout")
        assert 'action="/login"' in browser.get("/").text


def test_task_list_filters_sorts_and_pages(
    coordinator: RunningCoordinator, api: httpx.Client
) -> None:
    for n in range(1, 31):
        api.post(
            "/api/v1/tasks",
            json={
                "title": f"task number {n}" + (" flaky" if n % 10 == 0 else ""),
                "github_repository": "acme/app" if n % 2 else "acme/lib",
                "github_issue_number": n,
                "labels": ["bug"] if n % 3 == 0 else ["docs"],
            },
        )
    with _signed_in(coordinator) as browser:

        def ids(**params: str) -> list[int]:
            html = browser.get("/tasks", params=params).text
            return [int(i) for i in re.findall(r'<a href="/tasks/(\d+)">', html)]

        assert ids() == list(range(30, 5, -1))  # newest first, 25 a page
        assert ids(page="2") == list(range(5, 0, -1))
        assert "page 2 of 2" in browser.get("/tasks", params={"page": "2"}).text
        assert ids(order="asc")[:3] == [1, 2, 3]
        assert set(ids(repository="acme/lib")) == set(range(2, 31, 2))
        assert set(ids(label="bug")) == set(range(3, 31, 3))
        assert ids(label="bu") == []  # a whole label, not a part of one
        assert ids(label='bug"%') == []  # quotes and LIKE wildcards are literal
        assert set(ids(q="flaky")) == {10, 20, 30}
        assert ids(q="#7") == [7]
        assert ids(status="completed") == []
        bad = browser.get("/tasks", params={"status": "nope"})
        assert bad.status_code == 422 and "status &#39;nope&#39; is not one of" in bad.text
        assert browser.get("/tasks", params={"sort": "title; drop"}).status_code == 422
        assert browser.get("/tasks", params={"page": "0"}).status_code == 422


def test_only_github_links_become_links(coordinator: RunningCoordinator, api: httpx.Client) -> None:
    local = api.post(
        "/api/v1/tasks",
        json={"title": "local", "github_repository": "/srv/repo", "github_issue_number": 1},
    ).json()
    with _signed_in(coordinator) as browser:
        html = browser.get(f"/tasks/{local['id']}").text
        assert "/srv/repo#1" in html and 'href="https://github.com//srv' not in html
    from claude_cluster.coordinator.web.views import issue_href, safe_href

    web = "https://github.com"
    assert safe_href("javascript:alert(1)", web) is None
    assert safe_href("https://evil.example/acme/app/pull/1", web) is None
    assert safe_href("http://github.com/acme/app/pull/1", web) is None  # scheme must match
    assert safe_href("https://github.com/acme/app/pull/1", web) == (
        "https://github.com/acme/app/pull/1"
    )
    assert issue_href('acme/app"><script>', 1, web) is None


async def test_actions_need_csrf_and_confirmation_and_go_through_the_service(
    coordinator: RunningCoordinator,
) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        await sims.add("a2", behaviour="hold")
        task = (await api.post("/api/v1/tasks", json=TASK)).json()
        await wait_until(lambda: sims.agents["a1"].held or sims.agents["a2"].held, timeout=10)
        first = "a1" if sims.agents["a1"].held else "a2"
        other = "a2" if first == "a1" else "a1"

        async with httpx.AsyncClient(base_url=coordinator.url, timeout=10) as browser:
            await browser.post("/login", data={"token": ADMIN_TOKEN})
            token = _csrf((await browser.get(f"/tasks/{task['id']}")).text)

            # no token, another session's token: refused, nothing changes
            refused = await browser.post(f"/tasks/{task['id']}/cancel", data={"confirm": "yes"})
            assert refused.status_code == 403 and "out of date" in refused.text
            forged = await browser.post(
                f"/tasks/{task['id']}/cancel", data={"confirm": "yes", "csrf_token": "0" * 64}
            )
            assert forged.status_code == 403
            # no confirmation: refused
            unconfirmed = await browser.post(
                f"/tasks/{task['id']}/cancel", data={"csrf_token": token}
            )
            assert unconfirmed.status_code == 400
            assert (await api.get(f"/api/v1/tasks/{task['id']}")).json()["status"] != "cancelled"

            # requeue to the other agent: the run on the first one stops, the other holds it
            moved = await browser.post(
                f"/tasks/{task['id']}/requeue",
                data={"csrf_token": token, "confirm": "yes", "agent_id": other},
            )
            assert moved.status_code == 303, moved.text
            await wait_until(lambda: sims.agents[other].held, timeout=10)

            async def moved_runs() -> list[dict[str, str]] | None:
                runs = (await api.get(f"/api/v1/tasks/{task['id']}/runs")).json()
                return runs if [r["status"] for r in runs] == ["cancelled", "running"] else None

            runs = await eventually(moved_runs)
            assert runs[1]["agent_id"] == other
            assert (await api.get(f"/api/v1/tasks/{task['id']}")).json()["retry_count"] == 0

            # drain, undrain
            drained = await browser.post(
                f"/agents/{other}/drain", data={"csrf_token": token, "confirm": "yes"}
            )
            assert drained.status_code == 303 and drained.headers["location"].endswith(
                "?done=drained"
            )
            assert (await api.get(f"/api/v1/agents/{other}")).json()["draining"] is True
            page = (await browser.get(f"/agents/{other}")).text
            assert "draining: finishes its runs" in page and "Undrain" in page
            await browser.post(f"/agents/{other}/undrain", data={"csrf_token": token})
            assert (await api.get(f"/api/v1/agents/{other}")).json()["draining"] is False

            # retry now only for a queued task
            early = await browser.post(f"/tasks/{task['id']}/retry", data={"csrf_token": token})
            assert early.status_code == 409 and "only a queued task" in early.text

            cancelled = await browser.post(
                f"/tasks/{task['id']}/cancel", data={"csrf_token": token, "confirm": "yes"}
            )
            assert cancelled.status_code == 303
            assert (await api.get(f"/api/v1/tasks/{task['id']}")).json()["status"] == "cancelled"
            await wait_until(lambda: not sims.agents[other].held, timeout=10)
            done = await browser.get(cancelled.headers["location"])
            assert "The task was cancelled" in done.text
            again = await browser.post(
                f"/tasks/{task['id']}/cancel", data={"csrf_token": token, "confirm": "yes"}
            )
            assert again.status_code == 409


async def test_a_bearer_caller_acts_without_csrf(coordinator: RunningCoordinator) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        reply = await api.post("/agents/a1/drain", data={"confirm": "yes"})
        assert reply.status_code == 303
        assert (await api.get("/api/v1/agents/a1")).json()["draining"] is True


async def test_retry_now_skips_the_back_off(
    start_coordinator: Callable[..., RunningCoordinator],
) -> None:
    # a back-off long enough that the dispatcher cannot end it before the button does
    coordinator = start_coordinator(retry_base_seconds=30, retry_max_seconds=60)
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        task = (await api.post("/api/v1/tasks", json=TASK)).json()
        await wait_until(lambda: sims.agents["a1"].held, timeout=10)
        sims.agents["a1"].behaviour = "refuse"
        run_id = next(iter(sims.agents["a1"].held))
        await sims.finish("a1", run_id, succeeded=False, error_category="crash", message="boom")
        status = (await api.get(f"/api/v1/tasks/{task['id']}")).json()
        assert status["status"] == "queued" and status["not_before"]
        reply = await api.post(f"/tasks/{task['id']}/retry")
        assert reply.status_code == 303
        after = (await api.get(f"/api/v1/tasks/{task['id']}")).json()
        assert after["not_before"] is None
        events = (await api.get(f"/api/v1/tasks/{task['id']}/events")).json()
        assert any(e["kind"] == "retry_now" for e in events)


async def test_the_overview_shows_running_runs_cost_and_readiness(
    coordinator: RunningCoordinator,
) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold", capacity=1, specialties=["python", "general"])
        task = (await api.post("/api/v1/tasks", json=TASK)).json()
        await wait_until(lambda: sims.agents["a1"].held, timeout=10)
        run_id = next(iter(sims.agents["a1"].held))
        await sims.report(
            "a1",
            run_id,
            [{"kind": "runner_finished", "message": "ok", "data": {"cost_usd": 0.25}}],
        )
        html = (await api.get("/overview/live")).text
        assert f'href="/tasks/{task["id"]}"' in html
        assert "$0.2500" in html  # cost so far, from the agent round that ended
        assert "full (1/1 slots)" in html
        assert "python" in html
        await sims.finish("a1", run_id, cost_usd=1.5)
        await wait_until(lambda: not sims.agents["a1"].held, timeout=5)
        html = (await api.get("/overview/live")).text
        assert "acme/app" in html and "$1.50 / $1.50" in html  # today / this week
        assert "<svg" in html


def test_the_live_log_streams_rendered_items(
    coordinator: RunningCoordinator, api: httpx.Client
) -> None:
    task = api.post("/api/v1/tasks", json=TASK).json()
    received: dict[str, list[str]] = {"log": [], "task": []}
    connected = threading.Event()
    last = api.get(f"/api/v1/tasks/{task['id']}/events").json()[-1]["id"]

    def listen() -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Last-Event-ID": str(last)}
        with httpx.stream(
            "GET", f"{coordinator.url}/tasks/{task['id']}/stream", headers=headers, timeout=15
        ) as stream:
            connected.set()
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in received:
                    received[event].append(line.split(":", 1)[1])
                if received["task"] and '"cancelled"' in received["task"][-1]:
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    api.put(f"/api/v1/tasks/{task['id']}", json={"title": "renamed <b>"})
    api.delete(f"/api/v1/tasks/{task['id']}")
    listener.join(timeout=12)
    # the edit is published as well as the status change
    changes = [json.loads(m) for m in received["task"]]
    assert [(c["kind"], c["status"]) for c in changes] == [
        ("updated", "queued"),
        ("cancelled", "cancelled"),
    ]
    html = "".join(received["log"])
    assert "created" not in html  # resumed after Last-Event-ID
    assert 'data-kind="updated"' in html and 'data-kind="cancelled"' in html


def test_log_items_render_tools_results_and_tests() -> None:
    from claude_cluster.run_log import PREVIEW_CHARS, log_item, tally

    tool = log_item(
        {
            "id": 1,
            "run_id": 7,
            "kind": "tool_use",
            "message": "Bash",
            "details": {"name": "Bash", "input": {"command": "pytest -q\nmore"}},
        }
    )
    assert tool.title == "Bash: pytest -q" and '"command"' in tool.detail
    long = log_item({"id": 2, "run_id": 7, "kind": "tool_result", "message": "x" * 5000})
    assert len(long.body) == PREVIEW_CHARS and len(long.body + long.more) == 5000
    tests = log_item(
        {
            "id": 3,
            "run_id": 7,
            "kind": "tests",
            "message": "3 passed, 1 failed",
            "details": {"command": "pytest", "output_tail": "FAILED test_x"},
        }
    )
    assert tests.title == "tests: 3 passed, 1 failed (pytest)" and tests.body == "FAILED test_x"
    fix = log_item(
        {
            "id": 4,
            "run_id": 7,
            "kind": "phase",
            "message": "fix round 1 of 2",
            "details": {"phase": "fix", "round": 1},
        }
    )
    cost = log_item(
        {
            "id": 5,
            "run_id": 7,
            "kind": "runner_finished",
            "message": "",
            "details": {"cost_usd": 0.5, "num_turns": 4},
        }
    )
    said = log_item({"id": 6, "run_id": 7, "kind": "assistant_text", "message": "Looking"})
    t = tally([tool, long, tests, fix, cost, said])[7]
    assert (t.messages, t.tool_calls, t.fix_rounds, t.cost_usd) == (1, 1, 1, 0.5)
    assert t.tests == "3 passed, 1 failed (pytest)"


def test_a_caller_who_may_not_act_sees_the_actions_disabled_and_is_refused(
    coordinator: RunningCoordinator, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``may_act`` is the one decision: a viewer role plugs in there."""
    from claude_cluster.coordinator.web import access

    task = api.post("/api/v1/tasks", json=TASK).json()
    monkeypatch.setattr(access, "may_act", lambda principal: False)
    with _signed_in(coordinator) as browser:
        html = browser.get(f"/tasks/{task['id']}").text
        assert "You may look but not act" in html and "(read only)" in html
        buttons = re.findall(r"<button[^>]*>", html.split('aria-label="Actions"')[1])
        assert buttons and all("disabled" in b for b in buttons)
        refused = browser.post(
            f"/tasks/{task['id']}/cancel", data={"csrf_token": _csrf(html), "confirm": "yes"}
        )
        assert refused.status_code == 403 and "ask an admin" in refused.text
    assert api.get(f"/api/v1/tasks/{task['id']}").json()["status"] == "queued"


async def test_moving_a_task_to_an_agent_that_cannot_take_it(
    coordinator: RunningCoordinator,
) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        await sims.add("full", behaviour="hold", capacity=1)
        await api.post("/api/v1/agents/full/drain", json={"drain": True})
        task = (await api.post("/api/v1/tasks", json=TASK)).json()
        await wait_until(lambda: sims.agents["a1"].held)
        refused = await api.post(
            f"/tasks/{task['id']}/requeue", data={"agent_id": "full", "confirm": "yes"}
        )
        assert refused.status_code == 409 and "agent full cannot take task" in refused.text
        # the run on a1 was stopped; the task is queued for any agent, not held back: a1
        # gets it again at once
        await wait_until(lambda: len(sims.agents["a1"].received) == 2)
        assert not sims.agents["full"].received
        missing = await api.post(
            f"/tasks/{task['id']}/requeue", data={"agent_id": "nobody", "confirm": "yes"}
        )
        assert missing.status_code == 404
