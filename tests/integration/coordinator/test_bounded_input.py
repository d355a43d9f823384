"""Bounded input over real HTTP: every endpoint that takes a body refuses more than 1 MiB
with 413 before reading it whole (declared or streamed); overlong strings and lists, ints
beyond the database's columns and nulls for non-null fields are 422s naming the field;
responses carry the security headers; /metrics can require a token."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from claude_cluster.coordinator.api.guards import API_BODY_LIMIT
from claude_cluster.coordinator.app import create_app
from tests.conftest import ADMIN_TOKEN, REGISTRATION_TOKEN, RunningCoordinator, coordinator_settings

pytestmark = pytest.mark.timeout(60)

TASK = {"title": "Fix it", "github_repository": "acme/app", "github_issue_number": 3}


def body_routes(db_url: str) -> list[tuple[str, str]]:
    """(method, path) of every route that takes a body: the API's, from its OpenAPI
    document, and the dashboard's forms (sign-in and the actions)."""
    app = create_app(coordinator_settings(db_url))
    found = [("POST", "/login"), ("POST", "/tasks/1/cancel"), ("POST", "/agents/a1/drain")]
    for template, operations in app.openapi()["paths"].items():
        if template.startswith("/webhook/"):
            continue  # streams under GitHub's 25 MB cap itself (test_webhooks)
        for method, operation in operations.items():
            if "requestBody" in operation:
                path = template.replace("{task_id}", "1").replace("{run_id}", "1")
                path = path.replace("{agent_id}", "a1").replace("{token_id}", "1")
                found.append((method.upper(), path))
    return found


def test_every_body_over_the_limit_is_413(coordinator: RunningCoordinator, db_url: str) -> None:
    routes = body_routes(db_url)
    assert ("POST", "/api/v1/tasks") in routes and ("POST", "/api/v1/runs/1/result") in routes
    big = b"x" * (API_BODY_LIMIT + 1)

    def streamed() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it comes
        for _ in range(API_BODY_LIMIT // 65536 + 2):
            yield b"y" * 65536

    with httpx.Client(base_url=coordinator.url, timeout=30) as client:
        for method, path in routes:
            for content in (big, streamed()):
                answer = client.request(
                    method,
                    path,
                    content=content,
                    headers={
                        "Authorization": f"Bearer {ADMIN_TOKEN}",
                        "Content-Type": "application/json"
                        if path.startswith("/api/")
                        else "application/x-www-form-urlencoded",
                    },
                )
                assert answer.status_code == 413, (method, path, answer.text)
                assert "over the limit" in answer.json()["detail"]
        # just under the limit is read (and judged on its merits)
        ok = client.post(
            "/api/v1/tasks",
            json={**TASK, "description": "d" * 60_000},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert ok.status_code == 201


def _field_errors(answer: httpx.Response) -> str:
    assert answer.status_code == 422, answer.text
    return answer.text


def test_overlong_fields_huge_numbers_and_nulls_are_422(coordinator: RunningCoordinator) -> None:
    with coordinator.client() as api, coordinator.client(REGISTRATION_TOKEN) as reg:
        for field, value in [
            ("title", "t" * 257),
            ("description", "d" * 65_537),
            ("labels", ["l"] * 101),
            ("github_issue_number", 2**31),
            ("budget_usd", 1e9),
        ]:
            assert field in _field_errors(api.post("/api/v1/tasks", json={**TASK, field: value}))
        # PostgreSQL cannot store a NUL character: refused, with the field, on both backends
        nul = _field_errors(api.post("/api/v1/tasks", json={**TASK, "title": "a\x00b"}))
        assert "title contains a NUL character" in nul
        assert api.get("/api/v1/agents/a%00b").status_code == 422
        task_id = api.post("/api/v1/tasks", json=TASK).json()["id"]
        for field in ("title", "description", "requirements"):
            text = _field_errors(api.put(f"/api/v1/tasks/{task_id}", json={field: None}))
            assert field in text and "not null" in text
        for path in (f"/api/v1/tasks/{2**63}", f"/api/v1/tasks/{10**30}", f"/api/v1/runs/{2**64}"):
            assert "task_id" in _field_errors(api.get(path)) or "run_id" in api.get(path).text
        assert "offset" in _field_errors(api.get("/api/v1/tasks", params={"offset": 2**40}))
        assert "after" in _field_errors(api.get(f"/api/v1/tasks/{task_id}/events?after={2**64}"))
        assert api.get("/api/v1/agents/" + "a" * 129).status_code == 422
        for page in (
            f"/tasks/{2**64}",
            f"/tasks/{2**64}/stream",
            "/agents/a%00b",
            "/tasks?q=a%00b",
            "/api/v1/tasks?repository=a%00b",
        ):
            assert api.get(page).status_code == 422, page  # the dashboard's URLs too

        agent = {"id": "a1", "name": "a1", "port": 9, "secret": "agent-secret-0123456789"}
        text = _field_errors(
            reg.post("/api/v1/agents", json={**agent, "metadata": {"x": "m" * 17_000}})
        )
        assert "metadata" in text
        assert "cpu_cores" in _field_errors(
            reg.post("/api/v1/agents", json={**agent, "cpu_cores": 2**40})
        )
        token = reg.post("/api/v1/agents", json=agent).json()["token"]
    with coordinator.client(token) as agent_api:
        event = {"seq": 0, "ts": "2026-12-04T10:00:00Z", "kind": "log", "message": "m"}
        many = {"events": [{**event, "seq": i} for i in range(501)]}
        assert "events" in _field_errors(agent_api.post("/api/v1/runs/1/events", json=many))
        fat = {"events": [{**event, "data": {"blob": "b" * 70_000}}]}
        assert "65536 bytes" in _field_errors(agent_api.post("/api/v1/runs/1/events", json=fat))
        files = {"succeeded": True, "changed_files": ["f"] * 10_001}
        assert "changed_files" in _field_errors(agent_api.post("/api/v1/runs/1/result", json=files))
        tokens = {"succeeded": True, "input_tokens": 2**63}
        assert "input_tokens" in _field_errors(agent_api.post("/api/v1/runs/1/result", json=tokens))
        beat = {"run_ids": [2**63]}
        assert "run_ids" in _field_errors(agent_api.put("/api/v1/agents/a1", json=beat))


def test_security_headers(coordinator: RunningCoordinator) -> None:
    with httpx.Client(base_url=coordinator.url) as browser:
        for path in ("/", "/health", "/api/v1/tasks"):
            headers = browser.get(path).headers
            csp = headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert "'unsafe-inline'" not in csp
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "no-referrer"
            assert "strict-transport-security" not in headers  # plain http
        assert "cdn.jsdelivr.net" in browser.get("/docs").headers["content-security-policy"]


def test_metrics_can_require_a_token(start_coordinator: Callable[..., RunningCoordinator]) -> None:
    coordinator = start_coordinator(metrics_token="scrape-token-0123456789")
    with httpx.Client(base_url=coordinator.url) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "METRICS_TOKEN" in wrong.json()["detail"]
        good = client.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"})
        assert good.status_code == 200 and "claude_tasks_queue_size" in good.text
