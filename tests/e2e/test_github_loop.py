"""The GitHub loop end to end: label an issue on the fake GitHub → signed webhook → task →
a real agent daemon process runs the REAL Claude Code CLI (against the fake Anthropic API)
→ branch pushed, pull request opened on the fake with the measured test results and cost →
"changes requested" review → follow-up run resumes the session and pushes to the same
branch → merge → the issue is closed with a comment.

The git remote: the coordinator derives ``repository_url`` as
``<GITHUB_WEB_URL>/<owner>/<name>.git``, so ``GITHUB_WEB_URL`` points at a smart-HTTP git
server on loopback that serves a local bare repository and insists on the token the
coordinator hands out with each run (the same way GitHub checks it).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.fakes.anthropic_api import (
    FAKE_API_KEY,
    FakeAnthropic,
    edit,
    held,
    text,
    tool_use,
    write,
)
from tests.fakes.github_api import FakeGitHub
from tests.integration.agent.conftest import GitHttpServer
from tests.support import databases
from tests.support.agents import CALC_FIXED, agent_env, agent_process, branch_file, make_origin
from tests.support.processes import coordinator_process
from tests.support.servers import free_port

pytestmark = [pytest.mark.claude, pytest.mark.timeout(180)]

REPO = "octo/app"
TOKEN = "ghp_e2e_loop_token_0123456789"
SECRET = b"e2e-webhook-secret"
TITLE = "add() subtracts instead of adding"
DESCRIPTION = "calc.add(2, 3) returns -1; test_calc.py fails."
EXTRA_TEST = "from calc import add\n\n\ndef test_add_negative():\n    assert add(-1, 1) == 0\n"


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.2)


def head_of(bare: Path, branch: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", branch], cwd=bare, capture_output=True, text=True, check=True
    ).stdout.strip()


def is_ancestor(bare: Path, old: str, new: str) -> bool:
    done = subprocess.run(["git", "merge-base", "--is-ancestor", old, new], cwd=bare)
    return done.returncode == 0


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_token(TOKEN, login="octocat")
        fake.add_repo(REPO)
        # the labeller and the reviewer are trusted: a collaborator and an organisation member
        fake.add_collaborator(REPO, "octocat", "write")
        fake.add_member(REPO.split("/")[0], "reviewer")
        yield fake


def test_label_to_merged_pull_request(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic, fake_github: FakeGitHub
) -> None:
    scenario = fake_api.scenario(
        [
            tool_use("Read", {"file_path": "calc.py"}, say="Let me look at calc.py."),
            edit("calc.py", "a - b", "a + b"),
            text("Fixed add()."),
            write("test_extra.py", EXTRA_TEST),  # the follow-up, for the review
            text("Added a test for negative numbers."),
        ]  # type: ignore[list-item]
    )
    git_root = tmp_path / "git"
    bare = make_origin(git_root / "octo")
    bare = bare.rename(git_root / "octo" / "app.git")
    with ExitStack() as stack:
        git_http = stack.enter_context(GitHttpServer(git_root, TOKEN))
        coordinator = stack.enter_context(
            coordinator_process(
                databases.new_sqlite_database(tmp_path),
                log=tmp_path / "coordinator.log",
                HEARTBEAT_INTERVAL="0.5",
                GITHUB_API_URL=fake_github.url,
                GITHUB_TOKEN=TOKEN,
                GITHUB_WEBHOOK_SECRET=SECRET.decode(),
                GITHUB_REPOSITORIES=REPO,
                GITHUB_WEB_URL=git_http.base_url,
                GITHUB_PROGRESS_INTERVAL="0.5",
            )
        )
        url = coordinator.url
        fake_github.set_hook(f"{url}/webhook/github", SECRET)
        env = agent_env(
            url,
            tmp_path / "agent",
            free_port(),
            AGENT_RUNNER="claude",
            CLAUDE_CODE_CLI_PATH=claude_cli,
            ANTHROPIC_BASE_URL=scenario.base_url,
            ANTHROPIC_API_KEY=FAKE_API_KEY,
            GITHUB_API_URL=fake_github.url,
            STALL_TIMEOUT="60",
            TEST_TIMEOUT="60",
            MAX_FIX_ROUNDS="1",
        )
        agent = stack.enter_context(agent_process(env, log=tmp_path / "agent.log"))
        api = stack.enter_context(
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        )

        def task_in(status: str) -> dict[str, Any] | None:
            tasks = api.get("/api/v1/tasks").json()
            return tasks[0] if tasks and tasks[0]["status"] == status else None

        def comments(number: int, containing: str) -> list[str]:
            bodies = [c["body"] for c in fake_github.comments(REPO, number)]
            return [b for b in bodies if containing in b]

        def logs() -> str:
            coordinator_log = (tmp_path / "coordinator.log").read_text(errors="replace")
            return f"agent:\n{agent.output()[-3000:]}\ncoordinator:\n{coordinator_log[-3000:]}"

        # 1. a person labels the issue
        issue = fake_github.create_issue(REPO, TITLE, DESCRIPTION, deliver=False)
        number = issue["number"]
        fake_github.label_issue(REPO, number, "claude-code")
        assert fake_github.deliveries[-1].status_code == 202

        # 2. the agent fixes it, the tests pass, the pull request opens
        try:
            task = wait_for(lambda: task_in("review"), "the task to reach review")
        except AssertionError:
            raise AssertionError(logs()) from None
        assert "claude-code-assigned" in fake_github.labels(REPO, number)
        (pr,) = fake_github.pull_requests(REPO)
        branch = pr["head"]["ref"]
        assert branch.startswith(f"claude/issue-{number}-")
        assert task["github_pr_number"] == pr["number"]
        body = pr["body"]
        assert "2 passed, 0 failed" in body and "## Cost" in body
        assert f"Task ID: {task['id']}" in body and f"Closes #{number}" in body
        assert branch_file(bare, branch, "calc.py") == CALC_FIXED
        first_head = head_of(bare, branch)
        (done,) = wait_for(lambda: comments(number, "opened a pull request"), "success", 15)
        assert pr["html_url"] in done and "2 passed, 0 failed" in done and "USD" in done
        # one progress comment, edited through the steps the real agent reported
        edits = [body for _, body in fake_github.comment_edits]
        assert any("⏳ Agent working" in body for body in edits), edits

        # 3. the reviewer asks for a test; a follow-up run resumes and pushes to the branch
        fake_github.submit_review(
            REPO, pr["number"], "changes_requested", "Please add a test for negative numbers."
        )
        assert fake_github.deliveries[-1].status_code == 202

        def follow_up_done() -> list[dict[str, Any]] | None:
            runs = api.get(f"/api/v1/tasks/{task['id']}/runs").json()
            ended = len(runs) == 2 and runs[-1]["status"] not in ("dispatching", "running")
            return runs if ended and task_in("review") else None

        try:
            runs = wait_for(follow_up_done, "the follow-up run")
        except AssertionError:
            raise AssertionError(logs()) from None
        first, second = sorted(runs, key=lambda r: r["attempt"])
        assert second["status"] == "succeeded", second
        assert second["branch"] == first["branch"] == branch
        assert second["session_id"] == first["session_id"], "the session was resumed"
        assert second["tests_passed"] == 3 and second["tests_failed"] == 0
        second_head = head_of(bare, branch)
        assert second_head != first_head and is_ancestor(bare, first_head, second_head)
        assert branch_file(bare, branch, "test_extra.py") == EXTRA_TEST
        feedback_turn = scenario.messages_requests[3].texts()
        assert any("add a test for negative numbers" in t for t in feedback_turn)
        (pr,) = fake_github.pull_requests(REPO)  # the same pull request, updated
        assert "3 passed, 0 failed" in pr["body"]

        # 4. merged: the task completes, the issue is closed with a comment
        fake_github.merge_pull_request(REPO, pr["number"])
        wait_for(lambda: task_in("completed"), "the task to complete", 15)
        wait_for(lambda: comments(number, "was merged"), "the completion comment", 15)
        wait_for(
            lambda: fake_github.issue(REPO, number)["state"] == "closed", "the issue to close", 15
        )
        assert git_http.seen_authorization and all(
            a == git_http.expected for a in git_http.seen_authorization if a
        )


def test_the_comment_shows_the_first_rounds_turns_and_cost_before_it_ends(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic, fake_github: FakeGitHub
) -> None:
    """The real CLI's first round is held at its third model call: by then the issue's
    comment shows the turns and estimated cost of the round, from the agent's
    round_progress; when the round ends, the CLI's own figures replace them."""
    big = {"input_tokens": 20_000}  # $0.10 a call at the list price of the CLI's default
    scenario = fake_api.scenario(
        [
            tool_use("Read", {"file_path": "calc.py"}, say="Let me look at calc.py.", **big),
            edit("calc.py", "a - b", "a + b", **big),
            held(text("Fixed add().", **big)),
        ]  # type: ignore[list-item]
    )
    git_root = tmp_path / "git"
    make_origin(git_root / "octo").rename(git_root / "octo" / "app.git")
    with ExitStack() as stack:
        stack.callback(scenario.release)  # never leave the CLI waiting
        git_http = stack.enter_context(GitHttpServer(git_root, TOKEN))
        coordinator = stack.enter_context(
            coordinator_process(
                databases.new_sqlite_database(tmp_path),
                log=tmp_path / "coordinator.log",
                HEARTBEAT_INTERVAL="0.5",
                GITHUB_API_URL=fake_github.url,
                GITHUB_TOKEN=TOKEN,
                GITHUB_WEBHOOK_SECRET=SECRET.decode(),
                GITHUB_REPOSITORIES=REPO,
                GITHUB_WEB_URL=git_http.base_url,
                GITHUB_PROGRESS_INTERVAL="0.5",
            )
        )
        fake_github.set_hook(f"{coordinator.url}/webhook/github", SECRET)
        env = agent_env(
            coordinator.url,
            tmp_path / "agent",
            free_port(),
            AGENT_RUNNER="claude",
            CLAUDE_CODE_CLI_PATH=claude_cli,
            ANTHROPIC_BASE_URL=scenario.base_url,
            ANTHROPIC_API_KEY=FAKE_API_KEY,
            GITHUB_API_URL=fake_github.url,
            STALL_TIMEOUT="60",
            TEST_TIMEOUT="60",
            MAX_FIX_ROUNDS="0",
        )
        agent = stack.enter_context(agent_process(env, log=tmp_path / "agent.log"))
        api = stack.enter_context(
            httpx.Client(
                base_url=coordinator.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
        )

        def logs() -> str:
            coordinator_log = (tmp_path / "coordinator.log").read_text(errors="replace")
            return f"agent:\n{agent.output()[-3000:]}\ncoordinator:\n{coordinator_log[-3000:]}"

        issue = fake_github.create_issue(REPO, TITLE, DESCRIPTION, deliver=False)
        number = issue["number"]
        fake_github.label_issue(REPO, number, "claude-code")
        live = re.compile(r"Agent working on `[^`]+` — (\d+) turns?, ~\$(\d+\.\d\d) so far")

        def shown_mid_round() -> re.Match[str] | None:
            for _, body in fake_github.comment_edits:
                if (found := live.search(body)) is not None:
                    return found
            return None

        try:
            wait_for(scenario.held.is_set, "the round's third model call")
            found = wait_for(shown_mid_round, "the round's figures in the comment", 30)
        except AssertionError:
            raise AssertionError(logs()) from None
        # still mid-round: the third call is unanswered, the round has not finished
        assert not scenario.released.is_set()
        turns, cost = int(found.group(1)), float(found.group(2))
        assert turns >= 1 and cost >= 0.1, found.group(0)
        (task,) = api.get("/api/v1/tasks").json()
        events = api.get(f"/api/v1/tasks/{task['id']}/events").json()
        kinds = [e["kind"] for e in events]
        assert "round_progress" in kinds and "runner_finished" not in kinds
        assert "model_usage" not in kinds  # the stream's usage lines stay on the agent
        page = api.get("/overview/live").text
        assert "~" in page

        scenario.release()
        try:
            wait_for(lambda: task_in_review(api), "the task to reach review")
        except AssertionError:
            raise AssertionError(logs()) from None
        events = api.get(f"/api/v1/tasks/{task['id']}/events").json()
        seqs = {e["kind"]: e["seq"] for e in events if e["run_id"] is not None}
        assert seqs["round_progress"] < seqs["runner_finished"]  # never after its round
        (run,) = api.get(f"/api/v1/tasks/{task['id']}/runs").json()
        assert run["num_turns"] == 3

        def final() -> list[str]:
            bodies = [c["body"] for c in fake_github.comments(REPO, number)]
            return [b for b in bodies if "opened a pull request" in b]

        (done,) = wait_for(final, "the final comment", 15)
        assert "so far" not in done and "USD" in done


def task_in_review(api: httpx.Client) -> bool:
    tasks = api.get("/api/v1/tasks").json()
    return bool(tasks) and tasks[0]["status"] == "review"
