"""``claude-cluster doctor`` as an operator runs it: a real process with the coordinator's
environment, against a real database (both backends), Redis and the fake GitHub."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, REGISTRATION_TOKEN, RunningCoordinator
from tests.fakes.github_api import FakeGitHub
from tests.support import databases
from tests.support.keys import rsa_keypair
from tests.support.servers import free_port

APP_ID, INSTALLATION = 7, 70
REPO = "octo/app"


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_repo(REPO)
        yield fake


def doctor(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        [sys.executable, "-m", "claude_cluster", "doctor"],
        env={**keep, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def base_env(db_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "SECRET_KEY": "test-secret-key-0123456789",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "AGENT_REGISTRATION_TOKEN": REGISTRATION_TOKEN,
    }


def lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [" ".join(line.split()) for line in done.stdout.splitlines()]


def test_a_healthy_setup_passes_every_check(
    db_url: str, coordinator: RunningCoordinator, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    private, public = rsa_keypair()
    fake_github.add_app(APP_ID, public, INSTALLATION)
    registered = httpx.post(
        f"{coordinator.url}/api/v1/agents",
        headers={"Authorization": f"Bearer {REGISTRATION_TOKEN}"},
        json={"id": "a1", "name": "a1", "url": "http://127.0.0.1:9/", "secret": "s" * 32},
        timeout=10,
    )
    assert registered.status_code in (200, 201), registered.text
    env = base_env(db_url) | {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "GITHUB_REPOSITORIES": REPO,
        "GITHUB_API_URL": fake_github.url,
        "GITHUB_APP_ID": str(APP_ID),
        "GITHUB_APP_PRIVATE_KEY": private,
        "GITHUB_APP_INSTALLATION_ID": str(INSTALLATION),
        "GITHUB_WEBHOOK_SECRET": "hook-secret-0123456789",
    }
    done = doctor(env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = lines(done)
    assert any(line.startswith("ok database reachable, migrations at head") for line in out), out
    assert "ok redis answers PING" in out
    assert "ok webhook secret set" in out
    assert any(
        line.startswith(f"ok github app installation {INSTALLATION}: contents: write")
        for line in out
    )
    assert f"ok repository {REPO} reachable, default branch main" in out
    assert any(line.startswith("ok agent a1 idle, last heartbeat") for line in out), out
    assert out[-1].endswith("ok, 0 failed")
    assert private.splitlines()[1] not in done.stdout + done.stderr  # no secret printed


def test_a_broken_setup_names_each_failure_and_its_fix(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    """Not migrated, Redis down, App without pull_requests, no webhook, no agent."""
    private, public = rsa_keypair()
    fake_github.add_app(APP_ID, public, INSTALLATION)
    fake_github.installation_permissions = {"contents": "write", "issues": "write"}
    url = databases.new_sqlite_database(tmp_path, migrated=False)
    env = base_env(url) | {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "GITHUB_REPOSITORIES": REPO,
        "GITHUB_API_URL": fake_github.url,
        "GITHUB_APP_ID": str(APP_ID),
        "GITHUB_APP_PRIVATE_KEY": private,
        "GITHUB_APP_INSTALLATION_ID": str(INSTALLATION),
    }
    done = doctor(env, tmp_path)
    assert done.returncode == 1
    out = lines(done)
    assert any(
        line.startswith("FAIL database migrations at none, this version needs") for line in out
    )
    assert "fix: run 'claude-cluster db upgrade'" in out
    assert "FAIL redis no answer: ConnectionError" in out
    assert any(line.startswith("FAIL webhook secret unset, and polling is off") for line in out)
    assert any(
        line.startswith(f"FAIL github app installation {INSTALLATION} lacks write on pull_requests")
        for line in out
    ), out
    assert any(line.startswith("FAIL agents") for line in out)
    assert out[-1].endswith("failed") and not out[-1].endswith(" 0 failed")


def test_a_token_that_cannot_push_and_a_repository_it_cannot_see(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    fake_github.add_token("ghp_doctor_token", login="octocat")
    fake_github.repos[REPO].push = False
    url = databases.new_sqlite_database(tmp_path)
    env = base_env(url) | {
        "GITHUB_REPOSITORIES": f"{REPO},octo/missing",
        "GITHUB_API_URL": fake_github.url,
        "GITHUB_TOKEN": "ghp_doctor_token",
        "GITHUB_POLL_INTERVAL": "60",
    }
    done = doctor(env, tmp_path)
    assert done.returncode == 1
    out = lines(done)
    assert "ok webhook secret unset; polling every 60 s instead" in out
    assert "ok github credentials personal access token" in out
    assert f"FAIL repository {REPO} the token may not push here" in out
    assert any(line.startswith("FAIL repository octo/missing") for line in out)
    assert "ghp_doctor_token" not in done.stdout + done.stderr


def test_a_bad_variable_is_named_with_exit_2(tmp_path: Path) -> None:
    env = base_env(databases.new_sqlite_database(tmp_path)) | {"MAX_AGENTS": "many"}
    done = doctor(env, tmp_path)
    assert done.returncode == 2
    assert "MAX_AGENTS" in done.stderr


def test_an_agent_that_is_not_ready_is_named_with_its_reason(
    db_url: str, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    registered = httpx.post(
        f"{coordinator.url}/api/v1/agents",
        headers={"Authorization": f"Bearer {REGISTRATION_TOKEN}"},
        json={
            "id": "a2",
            "name": "a2",
            "url": "http://127.0.0.1:9/",
            "secret": "s" * 32,
            "ready": False,
            "not_ready_reason": "sandbox canary failed: bwrap cannot create a user namespace",
            # as the daemon tells it (agent/daemon.py)
            "configuration": {
                "ready": False,
                "not_ready_reason": "sandbox canary failed: no user namespaces",
                "sandbox": "on",
            },
        },
        timeout=10,
    )
    assert registered.status_code in (200, 201), registered.text
    done = doctor(base_env(db_url), tmp_path)
    assert done.returncode == 1
    out = lines(done)
    # the live reason the coordinator holds, not the registration's configuration
    assert (
        "FAIL agent a2 not ready: sandbox canary failed: bwrap cannot create a user namespace"
        in out
    ), out
