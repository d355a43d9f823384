"""The claude-cluster CLI against a real coordinator: every command, and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from claude_cluster.cli.main import app
from tests.conftest import ADMIN_TOKEN, REGISTRATION_TOKEN, RunningCoordinator
from tests.support.servers import free_port
from tests.support.sim_agents import SimAgents
from tests.support.waiting import eventually

TASK = {"title": "Fix the retry test", "github_repository": "acme/app", "github_issue_number": 8}

runner = CliRunner()


@pytest.fixture
def env(coordinator: RunningCoordinator) -> dict[str, str]:
    return {"COORDINATOR_URL": coordinator.url, "ADMIN_TOKEN": ADMIN_TOKEN}


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_task_commands(env: dict[str, str], coordinator: RunningCoordinator) -> None:
    code, out = cli(
        env,
        "task",
        "submit",
        "-r",
        "acme/app",
        "-i",
        "7",
        "-t",
        "Fix the API",
        "--label",
        "urgent",
        "--json",
    )
    assert code == 0, out
    task = json.loads(out)
    assert (task["priority"], task["status"]) == ("urgent", "queued")
    code, out = cli(env, "task", "submit", "-r", "acme/app", "-i", "7", "-t", "again")
    assert code == 0
    assert f"task {task['id']} queued" in out  # the same open task
    code, out = cli(env, "task", "list", "--status", "queued")
    assert code == 0
    assert "Fix the API" in out and "acme/app#7" in out and "s ago" in out
    code, out = cli(env, "task", "list", "--json")
    assert [t["id"] for t in json.loads(out)] == [task["id"]]
    code, out = cli(env, "task", "show", str(task["id"]), "--json")
    assert json.loads(out)["runs"] == []
    code, out = cli(env, "task", "logs", str(task["id"]))
    assert "created: queued with priority urgent" in out
    code, out = cli(env, "task", "logs", str(task["id"]), "--json")
    assert json.loads(out.splitlines()[0])["kind"] == "created"
    code, out = cli(env, "task", "cancel", str(task["id"]))
    assert (code, out.strip()) == (0, f"task {task['id']} cancelled")
    code, out = cli(env, "task", "cancel", str(task["id"]))
    assert code == 1
    assert "409" in out and "cancelled" in out
    code, out = cli(env, "task", "show", "999")
    assert code == 1 and "404" in out and "claude-cluster task list" in out


async def test_task_logs_tells_the_round_in_progress(
    env: dict[str, str], coordinator: RunningCoordinator
) -> None:
    async with SimAgents(coordinator.url) as sims, coordinator.async_client() as api:
        await sims.add("a1", behaviour="hold")
        task = (await api.post("/api/v1/tasks", json=TASK)).json()

        async def held() -> dict[int, dict[str, Any]]:
            return sims.agents["a1"].held

        run_id = next(iter(await eventually(held)))
        progress = {"fix_round": 0, "num_turns": 2, "cost_usd": 0.04, "estimate": True}
        await sims.report(
            "a1", run_id, [{"kind": "round_progress", "message": "so far", "data": progress}]
        )
        code, out = cli(env, "task", "logs", str(task["id"]))
        assert code == 0, out
        line = next(x for x in out.splitlines() if "in progress" in x)
        assert line.endswith(f" run {run_id}  agent round in progress: 2 turns, ~$0.0400 so far")
        finished = {"cost_usd": 0.05, "num_turns": 3}
        await sims.report(
            "a1",
            run_id,
            [{"kind": "runner_finished", "message": "done", "data": finished}],
            first_seq=1,
        )
        code, out = cli(env, "task", "logs", str(task["id"]))
        assert out.splitlines()[-1].endswith("agent round finished: $0.0500, 3 turns")


def test_bad_options_are_named(env: dict[str, str]) -> None:
    code, out = cli(env, "task", "submit", "-r", "acme/app", "-i", "0", "-t", "x")
    assert code == 2
    assert "--issue" in out
    code, out = cli(env, "task", "submit", "-r", "not a repo", "-i", "1", "-t", "x")
    assert code == 1
    assert "github_repository" in out


def test_agents_status_and_health(env: dict[str, str], coordinator: RunningCoordinator) -> None:
    httpx.post(
        f"{coordinator.url}/api/v1/agents",
        headers={"Authorization": f"Bearer {REGISTRATION_TOKEN}"},
        json={
            "id": "a1",
            "name": "a1",
            "port": 9,
            "secret": "agent-secret-0123456789",
            "ready": False,
            "not_ready_reason": "no model credential",
        },
    ).raise_for_status()
    code, out = cli(env, "agents", "list")
    assert code == 0 and "a1" in out and "s ago" in out
    assert "…" not in out, "the table fits a pipe's 80 columns whole"
    assert "a1: specialties none; runners unknown" in out  # none sent at registration
    assert "a1 is not ready: no model credential" in out
    code, out = cli(env, "agents", "list", "--json")
    assert [(a["id"], a["not_ready_reason"]) for a in json.loads(out)] == [
        ("a1", "no model credential")
    ]
    code, out = cli(env, "status")
    assert code == 0 and "a1 is not ready: no model credential" in out
    code, out = cli(env, "agents", "ready", "a1")
    assert (code, out.strip()) == (0, "agent a1 is ready: it takes work again")
    code, out = cli(env, "agents", "list", "--json")
    assert json.loads(out)[0]["not_ready_reason"] is None
    code, out = cli(env, "agents", "drain", "a1")
    assert (code, out.strip()) == (0, "agent a1 draining=True")
    code, out = cli(env, "agents", "drain", "a1", "--undo")
    assert out.strip() == "agent a1 draining=False"
    code, out = cli(env, "agents", "reset", "a1")
    assert code == 0 and "agent a1 reset" in out
    code, out = cli(env, "agents", "reset", "nope")
    assert code == 1 and "agent nope not found" in out
    code, out = cli(env, "status")
    assert code == 0 and "queued 0" in out and "a1" in out
    code, out = cli(env, "status", "--json")
    status = json.loads(out)
    assert status["queue"]["pending_tasks"] == 0 and status["agents"][0]["id"] == "a1"
    code, out = cli(env, "health")
    assert code == 0 and '"healthy"' in out


def test_missing_token_and_unreachable_coordinator(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .data/admin-token here
    code, out = cli({**env, "ADMIN_TOKEN": ""}, "task", "list")
    assert code == 2 and "ADMIN_TOKEN" in out
    code, out = cli({**env, "ADMIN_TOKEN": "wrong"}, "task", "list")
    assert code == 1 and "401" in out and "set ADMIN_TOKEN" in out
    down = {**env, "COORDINATOR_URL": f"http://127.0.0.1:{free_port()}"}
    code, out = cli(down, "task", "list")
    assert code == 3 and "cannot reach the coordinator" in out and "claude-cluster up" in out
    code, out = cli(down, "health")
    assert code == 3


def test_db_upgrade_and_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    good = {
        "SECRET_KEY": "k" * 20,
        "ADMIN_TOKEN": "a" * 20,
        "AGENT_REGISTRATION_TOKEN": "r" * 20,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
    }
    code, out = cli(good, "db", "upgrade")
    assert (code, out.strip()) == (0, "database at head")
    code, out = cli(good, "db", "check")
    assert (code, out.strip()) == (0, "no drift")
    code, out = cli({**good, "ADMIN_TOKEN": "changeme"}, "db", "upgrade")
    assert code == 2 and "ADMIN_TOKEN" in out
    code, out = cli({**good, "PORT": "eighty"}, "coordinator")
    assert code == 2 and "PORT" in out
