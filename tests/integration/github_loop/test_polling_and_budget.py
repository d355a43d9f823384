"""The polling fallback (conditional requests, the same path as webhooks), per-repository
settings from GITHUB_REPOSITORIES_FILE, the daily budget, and App tokens for runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import RunningCoordinator
from tests.integration.github_loop.conftest import REPO, SECRET, TOKEN, Loop
from tests.support.keys import rsa_keypair
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loop_settings(loop_settings: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    return {**loop_settings, **getattr(request, "param", {})}


@pytest.mark.parametrize("loop_settings", [{"github_poll_interval": 0.3}], indirect=True)
async def test_polling_finds_labelled_issues_once(loop: Loop) -> None:
    loop.fake.set_hook(None)  # a repository without a webhook
    issue = loop.fake.create_issue(REPO, "Found by polling", labels=["claude-code"])

    async def polled_task() -> list[dict[str, Any]]:
        return await loop.tasks()

    (task,) = await eventually(polled_task, timeout=10)
    assert task["github_issue_number"] == issue["number"]
    assert task["created_by"] == "github:poll"
    await eventually(lambda: _labelled(loop, issue["number"]), timeout=5)

    # nothing changed: the next polls are conditional and answered 304
    async def conditional() -> bool:
        lists = [r for r in loop.fake.requests if r["path"] == f"/repos/{REPO}/issues"]
        return any(r["if_none_match"] for r in lists[1:])

    await eventually(conditional, timeout=10)
    # a webhook for the same issue lands on the same task
    loop.fake.set_hook(loop.hook_url, SECRET)
    await loop.act(loop.fake.label_issue, REPO, issue["number"], "claude-code-urgent")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored" and row.task_id == task["id"]
    assert len(await loop.tasks()) == 1


async def _labelled(loop: Loop, number: int) -> bool:
    return "claude-code-assigned" in loop.fake.labels(REPO, number)


@pytest.fixture
def overrides(tmp_path: Path) -> Path:
    path = tmp_path / "repositories.json"
    document = {
        "repositories": {
            REPO: {
                "trigger_labels": ["ai"],
                "test_command": "uv run pytest -q",
                "daily_budget_usd": 0.5,
            }
        }
    }
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "loop_settings", [{"github_trigger_on_opened": True}], indirect=True, ids=["opened"]
)
async def test_repository_settings_and_daily_budget(
    loop: Loop, overrides: Path, start_coordinator: Any
) -> None:
    # GITHUB_TRIGGER_ON_OPENED: an issue opened without any label starts a task
    await loop.act(loop.fake.create_issue, REPO, "Opened plainly")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "processed", row.reason
    assert row.task_id is not None
    assert (await loop.store.get_task(row.task_id)).test_command is None

    # a coordinator with the overrides file instead: its own label, test command, budget
    # (the first stops: replicas share one configuration, and any of them may take a
    # delivery from the database)
    await asyncio.to_thread(loop.coordinator.server.stop)
    second = start_coordinator(
        **{
            **loop.coordinator.settings.model_dump(
                include={"github_api_url", "github_repositories"}
            ),
            "github_token": TOKEN,
            "github_webhook_secret": SECRET.decode(),
            "github_repositories_file": overrides,
        }
    )
    loop.fake.set_hook(second.url + "/webhook/github", SECRET)
    first = loop.fake.create_issue(REPO, "Budgeted", deliver=False)
    await loop.act(loop.fake.label_issue, REPO, first["number"], "claude-code")
    row = await loop.delivery(loop.last_delivery().id)
    assert "not a trigger label" in (row.reason or "")
    await loop.act(loop.fake.label_issue, REPO, first["number"], "ai")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "processed", row.reason
    assert row.task_id is not None
    budgeted = await loop.store.get_task(row.task_id)
    assert budgeted.test_command == "uv run pytest -q"
    await _spend(loop, budgeted.id, 0.6)

    over = loop.fake.create_issue(REPO, "Over budget", deliver=False)
    await loop.act(loop.fake.label_issue, REPO, over["number"], "ai")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored" and "daily budget" in (row.reason or "")
    (comment,) = await loop.comments(over["number"], "did not start")
    assert "$0.60 of $0.50" in comment

    # the refusal is said once a day: not again, nor after a restart (a once-mark)
    await loop.act(loop.fake.label_issue, REPO, over["number"], "ai")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored" and "daily budget" in (row.reason or "")
    await asyncio.to_thread(second.server.stop)
    third = start_coordinator(**second.settings.model_dump())
    loop.fake.set_hook(third.url + "/webhook/github", SECRET)
    await loop.act(loop.fake.label_issue, REPO, over["number"], "ai")
    row = await loop.delivery(loop.last_delivery().id)
    assert row.status == "ignored" and "daily budget" in (row.reason or "")
    assert len(await loop.comments(over["number"], "did not start")) == 1


async def _spend(loop: Loop, task_id: int, dollars: float) -> None:
    """Record a finished run that cost ``dollars`` (what an agent's result would do)."""
    from datetime import UTC, datetime

    from claude_cluster.coordinator.store.tables import Agent, TaskRun

    now = datetime.now(UTC)
    async with loop.sessions.begin() as s:
        s.add(
            Agent(
                id="spender",
                name="spender",
                url="http://127.0.0.1:9",
                registered_at=now,
                token_hash="x",
                status="offline",  # never a dispatch candidate
            )
        )
        await s.flush()
        s.add(
            TaskRun(
                task_id=task_id,
                attempt=99,
                agent_id="spender",
                status="succeeded",
                started_at=now,
                last_seen_at=now,
                ended_at=now,
                cost_usd=dollars,
            )
        )


PRIVATE_KEY, PUBLIC_KEY = rsa_keypair()


@pytest.mark.parametrize(
    "loop_settings",
    [
        {
            "github_app_id": "4242",
            "github_app_private_key": PRIVATE_KEY,
            "github_app_installation_id": 77,
        }
    ],
    indirect=True,
    ids=["app-and-pat"],
)
async def test_a_github_app_hands_each_run_a_narrowed_installation_token(loop: Loop) -> None:
    """GITHUB_TOKEN is set too: with an App configured, the PAT never reaches an agent."""

    loop.fake.add_app("4242", PUBLIC_KEY, 77)
    async with SimAgents(loop.coordinator.url) as sims:
        agent = await sims.add("a1", behaviour="hold")
        issue = loop.fake.create_issue(REPO, "App run", deliver=False)
        await loop.act(loop.fake.label_issue, REPO, issue["number"], "claude-code")
        row = await loop.delivery(loop.last_delivery().id)
        assert row.status == "processed", row.reason
        # the coordinator itself labelled the issue with an installation token
        assert "claude-code-assigned" in loop.fake.labels(REPO, issue["number"])

        async def request() -> dict[str, Any] | None:
            return next(iter(agent.held.values()), None)

        body = await eventually(request, timeout=10)
        assert "git_token" not in body, "a dispatch carries no token"
        # the run's agent asks for it at delivery; another agent and a finished run cannot
        answer = await sims.git_token("a1", body["run_id"])
        assert answer.status_code == 200
        fetch = await sims.git_token("a1", body["run_id"], "fetch")
        assert fetch.status_code == 200
        other = await sims.add("a2", behaviour="hold")
        assert other.token
        refused = await sims.git_token("a2", body["run_id"])
        assert refused.status_code == 403
        await sims.finish("a1", body["run_id"])
        late = await sims.git_token("a1", body["run_id"])
        assert late.status_code == 409 and "not active" in late.json()["detail"]
    token = answer.json()["token"]
    assert token.startswith("ghs_") and token != TOKEN
    minted = loop.fake.installation_tokens[token]
    assert minted["repositories"] == ["app"]
    assert minted["permissions"] == {"contents": "write", "pull_requests": "write"}
    # fetching only reads: its token cannot push
    read_only = loop.fake.installation_tokens[fetch.json()["token"]]
    assert read_only["permissions"] == {"contents": "read"}
    assert read_only["repositories"] == ["app"]


async def test_personal_token_mode_says_at_start_up_that_agents_receive_it(
    start_coordinator: Callable[..., RunningCoordinator], loop_settings: dict[str, Any]
) -> None:
    with capture_logs() as logs:
        await asyncio.to_thread(start_coordinator, **loop_settings)
    (warning,) = [e for e in logs if e["event"] == "github_token_sent_to_agents"]
    assert warning["log_level"] == "warning"
    assert "every agent receives it" in warning["detail"]
    assert TOKEN not in json.dumps(warning)  # never the secret itself
