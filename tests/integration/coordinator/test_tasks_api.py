"""Every /api/v1/tasks endpoint over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import RunningCoordinator

TASK = {
    "title": "Fix the login API returning 500",
    "description": "The server crashes when the password is empty.",
    "github_repository": "acme/webapp",
    "github_issue_number": 42,
}


def test_create_analyses_and_queues(api: httpx.Client) -> None:
    response = api.post("/api/v1/tasks", json={**TASK, "labels": ["urgent"]})
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == "queued"
    assert task["priority"] == "urgent"
    # keywords prefer, only explicit labels require (SPEC §4)
    assert (task["requirements"], set(task["preferences"])) == (["general"], {"backend", "testing"})
    assert task["estimated_complexity"] == "low"
    assert task["estimated_duration_minutes"] == 60
    assert task["attempts"] == 0


def test_duplicate_open_issue_returns_the_existing_task(api: httpx.Client) -> None:
    first = api.post("/api/v1/tasks", json=TASK)
    second = api.post("/api/v1/tasks", json={**TASK, "title": "again"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert len(api.get("/api/v1/tasks").json()) == 1


async def test_racing_creators_of_one_issue_get_one_task(coordinator: RunningCoordinator) -> None:
    async with coordinator.async_client() as client:
        replies = await asyncio.gather(
            *(client.post("/api/v1/tasks", json={**TASK, "title": f"try {i}"}) for i in range(12))
        )
        codes = sorted(r.status_code for r in replies)
        assert codes == [200] * 11 + [201], [r.text for r in replies if r.status_code >= 400]
        assert len({r.json()["id"] for r in replies}) == 1
        (task,) = (await client.get("/api/v1/tasks")).json()
        events = (await client.get(f"/api/v1/tasks/{task['id']}/events")).json()
        assert [e["kind"] for e in events] == ["created"]
        assert events[0]["message"] == f"queued with priority {task['priority']}"


def test_a_terminal_task_frees_its_issue(api: httpx.Client) -> None:
    first = api.post("/api/v1/tasks", json=TASK).json()
    assert api.delete(f"/api/v1/tasks/{first['id']}").status_code == 200
    again = api.post("/api/v1/tasks", json=TASK)
    assert again.status_code == 201
    assert again.json()["id"] != first["id"]


def test_invalid_bodies_name_the_field(api: httpx.Client) -> None:
    response = api.post("/api/v1/tasks", json={**TASK, "github_issue_number": 0})
    assert response.status_code == 422
    assert "github_issue_number" in response.text
    response = api.post("/api/v1/tasks", json={k: v for k, v in TASK.items() if k != "title"})
    assert response.status_code == 422
    assert "title" in response.text
    response = api.post("/api/v1/tasks", json={**TASK, "github_repository": "not a repo"})
    assert response.status_code == 422
    assert "github_repository" in response.text
    response = api.post("/api/v1/tasks", json={**TASK, "priority": "whenever"})
    assert response.status_code == 422
    assert "priority" in response.text


def test_get_list_update_and_filters(api: httpx.Client) -> None:
    a = api.post("/api/v1/tasks", json=TASK).json()
    b = api.post("/api/v1/tasks", json={**TASK, "github_issue_number": 43}).json()
    assert api.get(f"/api/v1/tasks/{a['id']}").json()["title"] == TASK["title"]
    updated = api.put(f"/api/v1/tasks/{b['id']}", json={"priority": "high", "title": "New"})
    assert updated.status_code == 200
    assert (updated.json()["priority"], updated.json()["title"]) == ("high", "New")
    api.delete(f"/api/v1/tasks/{a['id']}")
    queued = api.get("/api/v1/tasks", params={"status": "queued"}).json()
    assert [t["id"] for t in queued] == [b["id"]]
    assert api.get("/api/v1/tasks", params={"status": "bogus"}).status_code == 422


def test_unknown_ids_are_404(api: httpx.Client) -> None:
    for method, path in [
        ("GET", "/api/v1/tasks/999"),
        ("PUT", "/api/v1/tasks/999"),
        ("DELETE", "/api/v1/tasks/999"),
        ("GET", "/api/v1/tasks/999/runs"),
        ("GET", "/api/v1/tasks/999/events"),
    ]:
        response = api.request(method, path, json={} if method == "PUT" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert "999" in response.json()["detail"]


def test_illegal_transitions_are_409_with_the_current_status(api: httpx.Client) -> None:
    task = api.post("/api/v1/tasks", json=TASK).json()
    assert api.delete(f"/api/v1/tasks/{task['id']}").json()["status"] == "cancelled"
    again = api.delete(f"/api/v1/tasks/{task['id']}")
    assert again.status_code == 409
    assert again.json()["current_status"] == "cancelled"
    assert api.put(f"/api/v1/tasks/{task['id']}", json={"title": "x"}).status_code == 409
    other = api.post("/api/v1/tasks", json={**TASK, "github_issue_number": 7}).json()
    bad = api.put(f"/api/v1/tasks/{other['id']}", json={"status": "completed"})
    assert bad.status_code == 409


def test_cancel_through_put_status(api: httpx.Client) -> None:
    task = api.post("/api/v1/tasks", json=TASK).json()
    response = api.put(f"/api/v1/tasks/{task['id']}", json={"status": "cancelled"})
    assert response.json()["status"] == "cancelled"
    events = api.get(f"/api/v1/tasks/{task['id']}/events").json()
    assert [e["kind"] for e in events] == ["created", "cancelled"]


def test_tokens(coordinator: RunningCoordinator) -> None:
    with httpx.Client(base_url=coordinator.url) as anonymous:
        missing = anonymous.get("/api/v1/tasks")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = anonymous.get("/api/v1/tasks", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
    with coordinator.client(token="test-registration-token-0123456789") as registration:
        # the registration token registers agents and nothing else
        assert registration.get("/api/v1/tasks").status_code == 401


def test_local_repositories(api: httpx.Client, tmp_path: object) -> None:
    local = api.post(
        "/api/v1/tasks", json={**TASK, "github_repository": "/srv/repos/webapp"}
    ).json()
    assert local["github_repository"] == "/srv/repos/webapp"
    url = api.post("/api/v1/tasks", json={**TASK, "github_repository": "file:///srv/repos/other"})
    assert url.status_code == 201


def test_health_and_queue_status(api: httpx.Client) -> None:
    health = api.get("/health").json()
    assert health["status"] == "healthy"
    assert health["checks"] == {"database": "ok"}
    api.post("/api/v1/tasks", json=TASK)
    status = api.get("/api/v1/queue/status").json()
    assert status["pending_tasks"] == 1
    assert status["available_nodes"] == 0
    assert set(status) >= {
        "pending_tasks",
        "active_tasks",
        "completed_tasks",
        "available_nodes",
        "total_capacity",
        "current_load",
    }
