"""The dashboard: sign-in, the overview, a task's page, and its live log over SSE."""

from __future__ import annotations

import json
import threading

import httpx

from tests.conftest import ADMIN_TOKEN, RunningCoordinator

TASK = {"title": "Fix <the> bug", "github_repository": "acme/app", "github_issue_number": 3}


def test_pages_need_a_sign_in(coordinator: RunningCoordinator) -> None:
    with httpx.Client(base_url=coordinator.url) as browser:
        page = browser.get("/")
        assert page.status_code == 200
        assert 'action="/login"' in page.text
        assert browser.get("/tasks/1").status_code == 401
        assert browser.get("/tasks/1/stream").status_code == 401
        wrong = browser.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401
        assert "not the admin token" in wrong.text


def test_overview_and_task_page_after_sign_in(
    coordinator: RunningCoordinator, api: httpx.Client
) -> None:
    task = api.post("/api/v1/tasks", json=TASK).json()
    with httpx.Client(base_url=coordinator.url) as browser:
        signed = browser.post("/login", data={"token": ADMIN_TOKEN})
        assert signed.status_code == 303
        cookie = browser.cookies.get("claude_cluster_session")
        assert cookie and ADMIN_TOKEN not in cookie
        overview = browser.get("/")
        assert "Fix &lt;the&gt; bug" in overview.text  # escaped
        assert f'href="/tasks/{task["id"]}"' in overview.text
        page = browser.get(f"/tasks/{task['id']}")
        assert page.status_code == 200
        assert "created: queued with priority" in page.text
        assert browser.get("/tasks/999").status_code == 404
        browser.post("/logout")
        assert 'action="/login"' in browser.get("/").text


def test_the_live_log_streams_new_events(
    coordinator: RunningCoordinator, api: httpx.Client
) -> None:
    task = api.post("/api/v1/tasks", json=TASK).json()
    received: list[dict[str, object]] = []
    connected = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.stream(
            "GET", f"{coordinator.url}/tasks/{task['id']}/stream", headers=headers, timeout=10
        ) as stream:
            connected.set()
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "task":
                    received.append(json.loads(line.split(":", 1)[1]))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    # the subscription is made when the stream starts; cancel until the event arrives
    for _ in range(50):
        if received:
            break
        api.put(f"/api/v1/tasks/{task['id']}", json={"title": "renamed"})
        if api.get(f"/api/v1/tasks/{task['id']}").json()["status"] != "cancelled":
            api.delete(f"/api/v1/tasks/{task['id']}")
        listener.join(timeout=0.2)
    listener.join(timeout=5)
    assert received and received[0]["status"] == "cancelled"
