"""The operator's contract (``contract:`` in GITHUB_REPOSITORIES_FILE) reaches the agent.

A real coordinator watching ``octo/app`` on the fake GitHub dispatches to a real agent
daemon whose ``command`` runner records the limits it was given. The repository's
``.claude-cluster.yml`` asks for more than the operator allows (a bigger budget, more
turns, a host outside the allowlist), as a repository under someone else's control would:
the run gets the operator's caps and the refusals are events of the run.

The policy's ``runner`` (the repository's, else the operator's) picks the runner: the real
Claude CLI (against the fake Anthropic API) on an agent whose own runner is ``command``,
and a refusal before any model call for a runner the agent does not have.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningCoordinator
from tests.fakes.anthropic_api import FAKE_API_KEY, FakeAnthropic, edit, text, tool_use
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
    """(Each test asks for it before ``start_coordinator``: the coordinator stops first.)"""
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


def ended(task: dict[str, Any]) -> bool:
    return task["status"] in {"review", "completed", "failed"}


async def _task(
    api: httpx.AsyncClient, task_id: int, done: Callable[[dict[str, Any]], bool] = ended
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        task: dict[str, Any] = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        return task if done(task) else None

    return await eventually(probe, timeout=60, interval=0.1)


@dataclass
class Ran:
    """One task of ``octo/app`` run to its end by a real coordinator and agent."""

    task: dict[str, Any]
    events: list[dict[str, Any]]
    agent: dict[str, Any]
    bare: Path
    opener: Opener
    runs: list[dict[str, Any]]

    def contract_events(self, level: str) -> str:
        return " | ".join(
            e["message"] for e in self.events if e["kind"] == "contract" and e["level"] == level
        )


async def run_one_task(
    fake_github: FakeGitHub,
    start_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
    *,
    operator: dict[str, Any],
    contract: str,
    agent_command: str,
    done: Callable[[dict[str, Any]], bool] = ended,
    **agent_overrides: Any,
) -> Ran:
    """``octo/app`` (the buggy calc and ``contract`` as its ``.claude-cluster.yml``) on the
    fake GitHub and a git server; the operator's ``contract:`` in the repositories file; an
    agent running ``agent_command`` as its ``command`` runner; one task, to its end."""
    git_root = tmp_path / "git"
    files = {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST, ".claude-cluster.yml": contract}
    bare = make_origin(git_root / "octo", files).rename(git_root / "octo" / "app.git")
    operator_file = tmp_path / "repositories.json"
    operator_file.write_text(json.dumps({"repositories": {REPO: {"contract": operator}}}))
    issue = fake_github.create_issue(REPO, "add() subtracts", deliver=False)
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
                agent_command=agent_command,
                specialties=ALL_SPECIALTIES,
                github_api_url=fake_github.url,
                **agent_overrides,
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
                task = await _task(api, created.json()["id"], done)
                events = (await api.get(f"/api/v1/tasks/{task['id']}/events")).json()
                runs = (await api.get(f"/api/v1/tasks/{task['id']}/runs")).json()
                agent_row = (await api.get("/api/v1/agents/agent-1")).json()
        finally:
            assert await agent.stop() == 0
    return Ran(task, events, agent_row, bare, opener, runs)


async def test_the_operator_caps_reach_the_agent_and_a_greedy_contract_gets_neither(
    fake_github: FakeGitHub,
    start_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
) -> None:
    record = tmp_path / "limits.json"
    script = recording_fixer(tmp_path / "bin", record)
    ran = await run_one_task(
        fake_github,
        start_coordinator,
        tmp_path,
        operator=OPERATOR,
        contract=greedy_contract(),
        agent_command=f"{sys.executable} {script}",
    )
    assert ran.task["status"] == "review", ran.task.get("error_message")
    # the runner got the operator's caps, not what the repository asked for
    limits = json.loads(record.read_text())
    assert limits["CLAUDE_CLUSTER_MAX_TURNS"] == "7"
    assert float(limits["CLAUDE_CLUSTER_BUDGET_USD"]) == 2
    # the hosts the operator's allowlist covers, and the refusals said in the run's events
    [policy] = [
        e for e in ran.events if e["kind"] == "contract" and "network_allow" in e["details"]
    ]
    assert policy["details"]["network_allow"] == ["pypi.org", "files.pythonhosted.org"]
    assert policy["details"]["network_refused"] == ["evil.example.com"]
    assert (policy["details"]["budget_usd"], policy["details"]["max_turns"]) == (2, 7)
    warnings = ran.contract_events("warning")
    assert "evil.example.com" in warnings
    assert "budget_usd: 50 asked, capped to the operator's 2" in warnings
    assert "max_turns: 500 asked, capped to the operator's 7" in warnings
    # and the run went on to deliver within them
    [pr] = ran.opener.opened
    assert branch_file(ran.bare, pr.head, "calc.py") == CALC_FIXED


def plain_contract(extra: str = "") -> str:
    """Setup and tests the agent can run as they are, plus ``extra``."""
    return f"setup: ['true']\ntest: {sys.executable} -m pytest -q -p no:cacheprovider\n{extra}"


@pytest.mark.claude
@pytest.mark.timeout(150)
async def test_the_runner_the_policy_names_runs_instead_of_the_agents_own(
    fake_github: FakeGitHub,
    start_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
    claude_cli: str,
    fake_api: FakeAnthropic,
) -> None:
    """The agent runs ``command``; the operator's contract names ``claude`` (the default,
    the repository says nothing): the real Claude CLI does the run, the command never
    starts."""
    scenario = fake_api.scenario(
        [
            tool_use("Read", {"file_path": "calc.py"}, say="Let me look at calc.py."),
            edit("calc.py", "a - b", "a + b"),
            text("Fixed add()."),
        ]
    )
    record = tmp_path / "limits.json"
    script = recording_fixer(tmp_path / "bin", record)
    ran = await run_one_task(
        fake_github,
        start_coordinator,
        tmp_path,
        operator={"runner": "claude"},
        contract=plain_contract(),
        agent_command=f"{sys.executable} {script}",
        claude_code_cli_path=claude_cli,
        anthropic_api_key=FAKE_API_KEY,
        anthropic_base_url=scenario.base_url,
        stall_timeout=60,
    )
    assert ran.task["status"] == "review", ran.task.get("error_message")
    assert not record.exists(), "the agent's own runner ran"
    assert scenario.messages_requests, "the Claude CLI made no model call"
    [agent_phase] = [e for e in ran.events if e["details"].get("phase") == "agent"]
    assert agent_phase["details"]["runner"] == "claude"
    [pr] = ran.opener.opened
    assert branch_file(ran.bare, pr.head, "calc.py") == CALC_FIXED


def needs_codex(task: dict[str, Any]) -> bool:
    """(The operator's ``command`` is the task's runner from its creation until an agent
    reads the repository's ``codex``.)"""
    return ended(task) or (task["status"] == "queued" and task["required_runner"] == "codex")


async def test_a_runner_the_agent_does_not_have_ends_the_run_before_any_model_call(
    fake_github: FakeGitHub,
    start_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The repository names ``codex`` (over the operator's ``command``) and this agent has
    no codex: the run ends as ``contract_error`` naming it, the task waits for an agent
    that offers codex without a retry counted, and nothing counts against the agent, which
    is healthy (as ``runner_error`` would: a repository could then put every agent without
    codex out of service)."""
    kept = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "codex").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))
    record = tmp_path / "limits.json"
    script = recording_fixer(tmp_path / "bin", record)
    ran = await run_one_task(
        fake_github,
        start_coordinator,
        tmp_path,
        operator={"runner": "command"},
        contract=plain_contract("runner: codex\n"),
        agent_command=f"{sys.executable} {script}",
        done=needs_codex,
    )
    assert ran.task["status"] == "queued", ran.task.get("error_message")
    assert ran.task["required_runner"] == "codex"
    assert (ran.task["retry_count"], ran.task["attempts"]) == (0, 1)
    assert ran.task["waiting_for"] == "waiting for an agent with: runner codex"
    [run] = ran.runs
    assert (run["status"], run["error_category"]) == ("failed", "contract_error")
    assert run["message"].startswith(
        "the contract names runner codex, which this agent cannot run"
    ), run["message"]
    assert "not installed on this agent" in run["message"]
    assert "codex" in ran.contract_events("error")
    [requeued] = [e for e in ran.events if e["kind"] == "runner_required"]
    assert "agent-1 cannot run codex" in requeued["message"]
    assert not record.exists(), "a runner ran"
    assert ran.agent["fault_streak"] == 0 and ran.agent["not_ready_reason"] is None
    assert ran.agent["runners"] == ["command"]


async def test_a_mixed_cluster_routes_each_task_to_an_agent_with_its_runner(
    fake_github: FakeGitHub,
    start_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
) -> None:
    """Two real agents: ``claude-only`` (the Claude CLI, never started here, and no
    ``AGENT_COMMAND``) and ``command-only`` (a fixer script, no Claude CLI). ``octo/app``'s
    own file names ``command``: the first agent refuses it, the task waits for ``command``
    without a retry spent and ends on the second. ``octo/lib``'s operator names ``command``:
    its task needs it from its creation and never reaches the first agent."""
    fake_github.add_repo("octo/lib")
    git_root = tmp_path / "git"
    for name, contract in (("app", plain_contract("runner: command\n")), ("lib", "")):
        files = {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST}
        if contract:
            files[".claude-cluster.yml"] = contract
        make_origin(git_root / "octo" / name, files).rename(git_root / "octo" / f"{name}.git")
    operator_file = tmp_path / "repositories.json"
    operator_file.write_text(
        json.dumps({"repositories": {REPO: {}, "octo/lib": {"contract": {"runner": "command"}}}})
    )
    issues = {
        repo: fake_github.create_issue(repo, "add() subtracts", deliver=False)["number"]
        for repo in (REPO, "octo/lib")
    }
    script = recording_fixer(tmp_path / "bin", tmp_path / "limits.json")
    common: dict[str, Any] = {
        "specialties": ALL_SPECIALTIES,
        "github_api_url": fake_github.url,
        "test_timeout": 60,
    }
    with GitHttpServer(git_root, TOKEN) as git_http:
        coordinator = start_coordinator(
            heartbeat_interval=0.5,
            github_api_url=fake_github.url,
            github_token=TOKEN,
            github_webhook_secret="operator-contract-secret",
            github_repositories=f"{REPO},octo/lib",
            github_repositories_file=operator_file,
            github_web_url=git_http.base_url,
            github_poll_interval=0,
        )
        claude_only = await start_daemon(
            agent_settings(
                coordinator.url,
                tmp_path / "ws-claude",
                agent_id="claude-only",
                agent_runner="claude",
                agent_command=None,
                claude_code_cli_path=sys.executable,  # found; never run: refused first
                anthropic_api_key="sk-test",
                **common,
            )
        )
        command_only = None
        try:
            async with admin(coordinator.url) as api:
                ids = {}
                for repo, number in issues.items():
                    created = await api.post(
                        "/api/v1/tasks",
                        json={
                            "title": "add() subtracts",
                            "description": "add(2, 3) returns -1 instead of 5",
                            "github_repository": repo,
                            "github_issue_number": number,
                        },
                    )
                    assert created.status_code == 201, created.text
                    ids[repo] = created.json()["id"]
                    assert created.json()["required_runner"] == (
                        "command" if repo == "octo/lib" else None
                    )
                # app: refused by claude-only, then waits for command with no retry spent
                app = await _task(
                    api,
                    ids[REPO],
                    lambda t: ended(t) or t["required_runner"] == "command",
                )
                assert (app["status"], app["retry_count"], app["attempts"]) == ("queued", 0, 1)
                assert app["waiting_for"] == "waiting for an agent with: runner command"
                lib = (await api.get(f"/api/v1/tasks/{ids['octo/lib']}")).json()
                assert (lib["status"], lib["attempts"]) == ("queued", 0)
                assert lib["waiting_for"] == "waiting for an agent with: runner command"
                agents = {a["id"]: a for a in (await api.get("/api/v1/agents")).json()}
                assert "command" not in agents["claude-only"]["runners"]
                assert "claude" in agents["claude-only"]["runners"]
                # an agent with command joins: both tasks end there
                opener = Opener()
                command_only = await start_daemon(
                    agent_settings(
                        coordinator.url,
                        tmp_path / "ws-command",
                        agent_id="command-only",
                        agent_command=f"{sys.executable} {script}",
                        claude_code_cli_path=str(tmp_path / "nowhere" / "claude"),
                        **common,
                    ),
                    open_pull_request=opener,
                )
                for repo, task_id in ids.items():
                    done = await _task(api, task_id)
                    assert done["status"] == "review", (repo, done.get("error_message"))
                    assert done["retry_count"] == 0
                    runs = (await api.get(f"/api/v1/tasks/{task_id}/runs")).json()
                    ran = [
                        (r["agent_id"], r["status"]) for r in sorted(runs, key=lambda r: r["id"])
                    ]
                    expected = [("command-only", "succeeded")]
                    if repo == REPO:
                        expected.insert(0, ("claude-only", "failed"))
                    assert ran == expected, repo
                agents = {a["id"]: a for a in (await api.get("/api/v1/agents")).json()}
                assert "claude" not in agents["command-only"]["runners"]
                refuser = agents["claude-only"]
                assert (refuser["fault_streak"], refuser["total_tasks_failed"]) == (0, 0)
                assert refuser["not_ready_reason"] is None
                assert len(opener.opened) == 2
        finally:
            assert await claude_only.stop() == 0
            if command_only is not None:
                assert await command_only.stop() == 0
