"""Who may call what, for every route of the coordinator: the route table (read from the
app) × {none, wrong, viewer, admin, registration, own agent, other agent}.

Each route has a row in :data:`EXPECTED` naming the callers it lets through its gate
(anything but 401 and 403); a route without a row fails the test, so a new route cannot
ship without a decision about who may call it. Bodies are deliberately invalid where a
valid one would change state: authentication runs before validation, so an allowed caller
sees 422 and a refused one 401/403, and the matrix changes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from claude_cluster.coordinator.app import create_app
from tests.conftest import (
    ADMIN_TOKEN,
    REGISTRATION_TOKEN,
    RunningCoordinator,
    coordinator_settings,
)
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

CALLERS = ("none", "wrong", "viewer", "admin", "registration", "own", "other")
OPEN = frozenset(CALLERS)
ADMIN = frozenset({"admin"})
READ = frozenset({"admin", "viewer"})
READ_OR_OWN = frozenset({"admin", "viewer", "own"})
OWN = frozenset({"own"})
ENROL = frozenset({"admin", "registration", "own", "other"})

#: (method, path) → callers let through (status neither 401 nor 403)
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/health"): OPEN,
    ("GET", "/metrics"): OPEN,  # METRICS_TOKEN unset here (test_bounded_input sets it)
    ("POST", "/api/v1/tasks"): ADMIN,
    ("GET", "/api/v1/tasks"): READ,
    ("GET", "/api/v1/tasks/{task_id}"): READ,
    ("PUT", "/api/v1/tasks/{task_id}"): ADMIN,
    ("DELETE", "/api/v1/tasks/{task_id}"): ADMIN,
    ("GET", "/api/v1/tasks/{task_id}/runs"): READ,
    ("GET", "/api/v1/tasks/{task_id}/events"): READ,
    ("POST", "/api/v1/agents"): ENROL,  # which id each may enrol: test_agents_api
    ("GET", "/api/v1/agents"): READ,
    ("GET", "/api/v1/agents/{agent_id}"): READ_OR_OWN,
    ("PUT", "/api/v1/agents/{agent_id}"): frozenset({"admin", "own"}),
    ("GET", "/api/v1/agents/{agent_id}/tasks"): READ_OR_OWN,
    ("POST", "/api/v1/agents/{agent_id}/tasks"): ADMIN,
    ("POST", "/api/v1/agents/{agent_id}/reset"): ADMIN,
    ("POST", "/api/v1/agents/{agent_id}/ready"): ADMIN,
    ("POST", "/api/v1/agents/{agent_id}/drain"): ADMIN,
    ("GET", "/api/v1/runs/{run_id}"): READ_OR_OWN,
    ("POST", "/api/v1/runs/{run_id}/events"): OWN,
    ("POST", "/api/v1/runs/{run_id}/phase"): OWN,
    ("POST", "/api/v1/runs/{run_id}/git-token"): OWN,
    ("POST", "/api/v1/runs/{run_id}/confirm-delivery"): OWN,
    ("POST", "/api/v1/runs/{run_id}/result"): OWN,
    ("GET", "/api/v1/queue/status"): READ,
    ("POST", "/api/v1/tokens"): ADMIN,
    ("GET", "/api/v1/tokens"): ADMIN,
    ("DELETE", "/api/v1/tokens/{token_id}"): ADMIN,
    ("GET", "/webhook/health"): OPEN,
    # gated by its HMAC signature, not by tokens (test_webhooks, test_trust)
    ("POST", "/webhook/github"): OPEN,
    ("POST", "/login"): OPEN,  # a form with the token (test_people)
    ("POST", "/logout"): OPEN,
    ("GET", "/"): OPEN,  # the sign-in form for anyone, the overview for readers
    ("GET", "/overview/live"): READ,
    ("GET", "/tasks"): READ,
    ("GET", "/tasks/{task_id}"): READ,
    ("GET", "/agents/{agent_id}"): READ,
    ("GET", "/tasks/{task_id}/stream"): READ,
    ("POST", "/tasks/{task_id}/cancel"): ADMIN,
    ("POST", "/tasks/{task_id}/retry"): ADMIN,
    ("POST", "/tasks/{task_id}/requeue"): ADMIN,
    ("POST", "/agents/{agent_id}/drain"): ADMIN,
    ("POST", "/agents/{agent_id}/undrain"): ADMIN,
}
#: state-changing routes are called with ids that do not exist (an allowed caller gets
#: 404 or 422), except where the gate needs the caller's own resource
HARMLESS = {"task_id": "999999", "token_id": "999999", "agent_id": "nobody"}


def route_table(db_url: str) -> list[tuple[str, str]]:
    app = create_app(coordinator_settings(db_url))
    table = []
    for mounted in app.routes:
        router = getattr(mounted, "original_router", None)
        for route in getattr(router, "routes", []) if router else [mounted]:
            if isinstance(route, APIRoute):
                table.extend((method, route.path) for method in sorted(route.methods))
    return table


def test_every_route_has_an_expected_row(db_url: str) -> None:
    missing = [r for r in route_table(db_url) if r not in EXPECTED]
    assert missing == [], f"routes without a row in EXPECTED: {missing}"
    stale = [r for r in EXPECTED if r not in route_table(db_url)]
    assert stale == [], f"rows for routes that do not exist: {stale}"


async def test_the_authorization_matrix(coordinator: RunningCoordinator, db_url: str) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        own = await sims.add("a1", behaviour="hold")
        task_id = (await api.post("/api/v1/tasks", json=_task(1))).json()["id"]
        await eventually(lambda: _async(own.held), timeout=10)
        run_id = next(iter(own.held))
        other = await sims.add("a2", behaviour="refuse")
        viewer = (await api.post("/api/v1/tokens", json={"name": "v"})).json()["token"]
        tokens: dict[str, str | None] = {
            "none": None,
            "wrong": "not-a-token-0123456789",
            "viewer": viewer,
            "admin": ADMIN_TOKEN,
            "registration": REGISTRATION_TOKEN,
            "own": own.token,
            "other": other.token,
        }
        ids = {"task_id": str(task_id), "run_id": str(run_id), "agent_id": "a1"}
        wrong: list[str] = []
        # the run's result ends the run: it goes last
        table = sorted(route_table(db_url), key=lambda r: r[1].endswith("/result"))
        async with httpx.AsyncClient(base_url=coordinator.url, timeout=10) as client:
            for method, template in table:
                for caller in CALLERS:
                    path = _fill(template, method, ids)
                    token = tokens[caller]
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    # a stream never ends: its status line is the answer
                    async with client.stream(
                        method, path, headers=headers, **_body(method, template)
                    ) as answer:
                        status = answer.status_code
                    allowed = status not in (401, 403)
                    if allowed != (caller in EXPECTED[(method, template)]):
                        wrong.append(f"{method} {path} as {caller}: {status}")
        assert wrong == [], "\n".join(wrong)


def _fill(template: str, method: str, ids: dict[str, str]) -> str:
    path = template
    for name, value in ids.items():
        harmless = (
            method == "POST" and name in HARMLESS and not template.startswith("/api/v1/runs")
        ) or (method == "DELETE" and name in HARMLESS)
        path = path.replace("{" + name + "}", HARMLESS[name] if harmless else value)
    return path.replace("{token_id}", HARMLESS["token_id"])


def _body(method: str, template: str) -> dict[str, Any]:
    if method == "GET":
        return {}
    if template.endswith("/events"):
        event = {"seq": 999, "ts": "2026-12-04T10:00:00Z", "kind": "log", "message": "m"}
        return {"json": {"events": [event]}}
    if template.endswith("/phase"):
        return {"json": {"phase": "in_progress"}}
    if template.endswith("/git-token"):
        return {"json": {"purpose": "fetch"}}
    if template.endswith("/result"):
        return {"json": {"succeeded": True}}
    if template == "/api/v1/agents/{agent_id}" and method == "PUT":
        return {"json": {"run_ids": []}}
    if template.startswith("/api/"):
        return {"json": {"not a field": True, "id": "bad id!"}}  # 422 once let through
    return {"data": {}}


def _task(issue: int) -> dict[str, object]:
    return {"title": "T", "github_repository": "acme/app", "github_issue_number": issue}


async def _async(value: object) -> object:
    return value
