"""The operator's contract (``contract:`` in GITHUB_REPOSITORIES_FILE) reaches the agent.

A real coordinator watching ``octo/app`` on the fake GitHub dispatches to a real agent
daemon whose ``command`` runner records the limits it was given. The repository's
``.claude-cluster.yml`` asks for more than the operator allows (a bigger budget, more
turns, a host outside the allowlist), as a repository under someone else's control would:
the run gets the operator's caps and the refusals are events of the run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningCoordinator
from tests.fakes.github_api import FakeGitHub
from tests.integration.agent.conftest import GitHttpServer
from tests.support.agents import (
    CALC_BUGGY,
    CALC_FIXED,
    CALC_TEST,
    Opener,
    admin,
    agent_settings,
    branch_file,
    make_origin,
    make_script,
    start_daemon,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

REPO = "octo/app"
TOKEN = "ghp_operator_contract_token_0123"
ALL_SPECIALTIES = ["backend", "frontend", "testing", "devops", "general"]
#: the operator's side, as an operator writes it
OPERATOR = {
    "budget_usd": 2,
    "max_turns": 7,
    "network": {"allow": ["pypi.org", "*.pythonhosted.org"]},
}


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_token(TOKEN, login="octocat")
        fake.add_repo(REPO)
        yield fake


def greedy_contract() -> str:
    """A repository contract that asks for more than the operator allows."""
    return (
        "setup: ['true']\n"
        f"test: {sys.executable} -m pytest -q -p no:cacheprovider\n"
        "budget_usd: 50\n"
        "max_turns: 500\n"
        "network:\n"
        "  allow: [pypi.org, files.pythonhosted.org, evil.example.com]\n"
    )


def recording_fixer(directory: Path, record: Path) -> Path:
    """A ``command`` runner that writes the limits it was given to ``record``, then fixes
    ``calc.py``."""
    return make_script(
        directory,
        "fixer.py",
        f"""
        import json, os, pathlib
        names = ("CLAUDE_CLUSTER_MAX_TURNS", "CLAUDE_CLUSTER_BUDGET_USD")
        limits = {{n: os.environ.get(n) for n in names}}
        pathlib.Path({str(record)!r}).write_text(json.dumps(limits))
        pathlib.Path("calc.py").write_text({CALC_FIXED!r})
        print(json.dumps({{"type": "result", "subtype": "success", "is_error": False,
            "result": "Fixed add().", "total_cost_usd": 0.01, "num_turns": 1,
            "session_id": "sess-1", "usage": {{"input_tokens": 10, "output_tokens": 5}}}}))
        """,
    )


async def _task(api: httpx.AsyncClient, task_id: int, wanted: set[str]) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        task: dict[str, Any] = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        return task if task["status"] in wanted else None

    return await eventually(probe, timeout=60, interval=0.1)


async def test_the_operator_caps_reach_the_agent_and_a_greedy_contract_gets_neither(
    fake_github: FakeGitHub,
    start_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
) -> None:
    # (fake_github first: the coordinator stops before the fake GitHub it comments on)
    git_root = tmp_path / "git"
    bare = make_origin(
        git_root / "octo",
        {
            "calc.py": CALC_BUGGY,
            "test_calc.py": CALC_TEST,
            ".claude-cluster.yml": greedy_contract(),
        },
    ).rename(git_root / "octo" / "app.git")
    operator_file = tmp_path / "repositories.json"
    operator_file.write_text(json.dumps({"repositories": {REPO: {"contract": OPERATOR}}}))
    issue = fake_github.create_issue(REPO, "add() subtracts", deliver=False)
    record = tmp_path / "limits.json"
    script = recording_fixer(tmp_path / "bin", record)
    opener = Opener()
    with GitHttpServer(git_root, TOKEN) as git_http:
        coordinator = start_coordinator(
            heartbeat_interval=0.5,
            github_api_url=fake_github.url,
            github_token=TOKEN,
            github_webhook_secret="operator-contract-secret",
            github_repositories=REPO,
            github_repositories_file=operator_file,
            github_web_url=git_http.base_url,
            github_poll_interval=0,
        )
        agent = await start_daemon(
            agent_settings(
                coordinator.url,
                tmp_path / "ws",
                agent_command=f"{sys.executable} {script}",
                specialties=ALL_SPECIALTIES,
                github_api_url=fake_github.url,
            ),
            open_pull_request=opener,
        )
        try:
            async with admin(coordinator.url) as api:
                created = await api.post(
                    "/api/v1/tasks",
                    json={
                        "title": "add() subtracts",
                        "description": "add(2, 3) returns -1 instead of 5",
                        "github_repository": REPO,
                        "github_issue_number": issue["number"],
                    },
                )
                assert created.status_code == 201, created.text
                task_id = created.json()["id"]
                task = await _task(api, task_id, {"review", "completed", "failed"})
                events = (await api.get(f"/api/v1/tasks/{task_id}/events")).json()
        finally:
            assert await agent.stop() == 0

    assert task["status"] == "review", task.get("error_message")
    # the runner got the operator's caps, not what the repository asked for
    limits = json.loads(record.read_text())
    assert limits["CLAUDE_CLUSTER_MAX_TURNS"] == "7"
    assert float(limits["CLAUDE_CLUSTER_BUDGET_USD"]) == 2
    # the hosts the operator's allowlist covers, and the refusals said in the run's events
    contract = [e for e in events if e["kind"] == "contract"]
    [policy] = [e for e in contract if "network_allow" in e["details"]]
    assert policy["details"]["network_allow"] == ["pypi.org", "files.pythonhosted.org"]
    warnings = " | ".join(e["message"] for e in contract if e["level"] == "warning")
    assert "evil.example.com" in warnings
    assert "budget_usd: 50 asked, capped to the operator's 2" in warnings
    assert "max_turns: 500 asked, capped to the operator's 7" in warnings
    # and the run went on to deliver within them
    [pr] = opener.opened
    assert branch_file(bare, pr.head, "calc.py") == CALC_FIXED
