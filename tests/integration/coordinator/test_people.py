"""People's credentials over real HTTP: API tokens with roles (created, listed and revoked
through the CLI, stored hashed), and dashboard sessions (server-side, expiring, revoked by
signing out, cookie flags, throttled failed sign-ins)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from claude_cluster.cli.main import app
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.tables import ApiToken, DashboardSession
from claude_cluster.coordinator.web.sessions import COOKIE, MAX_FAILURES
from tests.conftest import ADMIN_TOKEN, RunningCoordinator

pytestmark = pytest.mark.timeout(60)

TASK = {"title": "Fix it", "github_repository": "acme/app", "github_issue_number": 3}


def cli(coordinator: RunningCoordinator, *args: str) -> tuple[int, str]:
    env = {"COORDINATOR_URL": coordinator.url, "ADMIN_TOKEN": ADMIN_TOKEN}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def created_token(output: str) -> str:
    match = re.search(r"^(cc_\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


async def rows(db_url: str, table: type) -> list:  # type: ignore[type-arg]
    engine = create_engine(db_url)
    try:
        async with sessionmaker(engine)() as s:
            return list((await s.scalars(select(table))).all())
    finally:
        await engine.dispose()


def test_tokens_with_roles_from_the_cli(coordinator: RunningCoordinator, db_url: str) -> None:
    code, out = cli(coordinator, "tokens", "create", "grafana")
    assert code == 0 and "(viewer)" in out
    viewer = created_token(out)
    code, out = cli(coordinator, "tokens", "create", "ci", "--role", "admin")
    admin = created_token(out)
    code, out = cli(coordinator, "tokens", "create", "x", "--role", "root")
    assert code == 2 and "--role" in out

    with coordinator.client(viewer) as as_viewer, coordinator.client(admin) as as_admin:
        assert as_viewer.get("/api/v1/tasks").status_code == 200
        assert as_viewer.get("/api/v1/queue/status").status_code == 200
        refused = as_viewer.post("/api/v1/tasks", json=TASK)
        assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
        assert as_viewer.post("/api/v1/tokens", json={"name": "me"}).status_code == 403
        assert as_admin.post("/api/v1/tasks", json=TASK).status_code == 201
        task_id = as_admin.get("/api/v1/tasks").json()[0]["id"]
        assert as_viewer.delete(f"/api/v1/tasks/{task_id}").status_code == 403

    # stored as SHA-256 only
    stored = asyncio.run(rows(db_url, ApiToken))
    assert {row.role for row in stored} == {"admin", "viewer"}
    assert hashlib.sha256(viewer.encode()).hexdigest() in {row.token_hash for row in stored}
    assert all(viewer not in (row.token_hash, row.name) for row in stored)

    code, out = cli(coordinator, "tokens", "list")
    assert code == 0 and "grafana" in out and "viewer" in out and viewer not in out
    assert "s ago" in out  # created, as people read it
    code, out = cli(coordinator, "tokens", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and {t["name"] for t in listed} == {"grafana", "ci"}
    assert all("token" not in t and "token_hash" not in t for t in listed)
    viewer_id = next(row.id for row in stored if row.role == "viewer")
    code, out = cli(coordinator, "tokens", "revoke", str(viewer_id))
    assert code == 0 and "revoked" in out
    with coordinator.client(viewer) as as_viewer:
        assert as_viewer.get("/api/v1/tasks").status_code == 401
    code, out = cli(coordinator, "tokens", "revoke", "999")
    assert code == 1 and "not found" in out


def test_a_session_is_server_side_and_sign_out_revokes_it(
    coordinator: RunningCoordinator, db_url: str
) -> None:
    with httpx.Client(base_url=coordinator.url, timeout=10) as browser:
        signed_in = browser.post("/login", data={"token": ADMIN_TOKEN})
        assert signed_in.status_code == 303
        header = signed_in.headers["set-cookie"]
        assert "HttpOnly" in header and "SameSite=strict" in header.replace("Strict", "strict")
        assert "Secure" not in header  # plain http, FORCE_SECURE_COOKIES unset
        cookie = browser.cookies[COOKIE]
        assert browser.get("/tasks").status_code == 200
        # the database holds only the hash of the random session id
        (row,) = asyncio.run(rows(db_url, DashboardSession))
        assert row.id_hash == hashlib.sha256(cookie.encode()).hexdigest() and row.role == "admin"

        assert browser.post("/logout").status_code == 303
    assert asyncio.run(rows(db_url, DashboardSession)) == []
    # a copy of the cookie taken before signing out is worthless now
    with httpx.Client(base_url=coordinator.url, cookies={COOKIE: cookie}) as thief:
        assert thief.get("/tasks").status_code == 401
    # and a made-up one never worked
    with httpx.Client(base_url=coordinator.url, cookies={COOKIE: "0" * 43}) as forger:
        assert forger.get("/tasks").status_code == 401


def test_sessions_expire_and_viewers_cannot_act(
    start_coordinator: Callable[..., RunningCoordinator],
) -> None:
    coordinator = start_coordinator(dashboard_session_hours=1 / 3600, force_secure_cookies=True)
    code, out = cli(coordinator, "tokens", "create", "watcher")
    assert code == 0
    viewer = created_token(out)
    with coordinator.client() as api:
        task_id = api.post("/api/v1/tasks", json=TASK).json()["id"]
    with httpx.Client(base_url=coordinator.url, timeout=10) as browser:
        signed_in = browser.post("/login", data={"token": viewer})
        assert "Secure" in signed_in.headers["set-cookie"]  # forced
        # httpx keeps Secure cookies for https only: send it by hand
        cookie = signed_in.cookies[COOKIE]
    with httpx.Client(base_url=coordinator.url, cookies={COOKIE: cookie}) as browser:
        page = browser.get(f"/tasks/{task_id}")
        assert page.status_code == 200
        refused = browser.post(f"/tasks/{task_id}/cancel", data={"confirm": "yes"})
        assert refused.status_code == 403 and "look but not act" in refused.text
        time.sleep(1.2)
        assert browser.get(f"/tasks/{task_id}").status_code == 401  # expired


def test_failed_sign_ins_are_throttled_per_client(coordinator: RunningCoordinator) -> None:
    with httpx.Client(base_url=coordinator.url, timeout=10) as browser:
        for _ in range(MAX_FAILURES):
            assert browser.post("/login", data={"token": "guess"}).status_code == 401
        locked = browser.post("/login", data={"token": ADMIN_TOKEN})  # even the right one
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) > 0
        assert "Too many failed sign-ins" in locked.text
