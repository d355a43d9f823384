"""JobRunner on real git repositories and the real test step, with scripted runners."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from claude_cluster.agent.coordinator_client import CoordinatorClient
from claude_cluster.agent.job_runner import JobRunner
from claude_cluster.agent.pull_request import PullRequestRequest
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.run_context import JobConfig
from claude_cluster.agent.workspace import WorkspaceManager
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import ExecuteTaskRequest
from claude_cluster.runners import RunnerOutcome, RunSpec
from tests.support.agents import (
    CALC_BUGGY,
    CALC_FIXED,
    Opener,
    ScriptedRunner,
    branch_file,
    make_origin,
    ok,
    writes,
)

pytestmark = pytest.mark.timeout(60)

HALF_FIXED = "def add(a, b):\n    return a + b if a else 1\n"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path / "remote")


def request(origin: Path, **kw: Any) -> ExecuteTaskRequest:
    values: dict[str, Any] = {
        "run_id": 1,
        "task_id": 7,
        "title": "add() subtracts",
        "description": "add(2, 3) returns -1",
        "github_repository": str(origin),
        "github_issue_number": 3,
        "repository_url": str(origin),
        "timeout_seconds": 60,
    }
    values.update(kw)
    return ExecuteTaskRequest(**values)


def make_job_runner(tmp_path: Path, runner: ScriptedRunner, **kw: Any) -> JobRunner:
    config = JobConfig(
        agent_id="agent-t",
        homes_dir=tmp_path / "ws" / "homes",
        max_fix_rounds=kw.pop("max_fix_rounds", 2),
        runner_env=kw.pop("runner_env", {}),
        test_timeout=30,
        git_user_name="Agent",
        git_user_email="agent@example.invalid",
    )
    workspaces = WorkspaceManager(tmp_path / "ws", git_timeout=30)
    return JobRunner(config, workspaces=workspaces, runner=runner, **kw)


def reporter() -> RunReporter:
    # never started: the events stay queued where the test can read them
    return RunReporter(CoordinatorClient("http://127.0.0.1:9", registration_token="x"), 1)


def kinds(rep: RunReporter) -> list[str]:
    return [e.kind for e in rep._events.first(len(rep._events))]


async def test_a_fixed_bug_is_delivered_with_the_real_test_counts(
    tmp_path: Path, origin: Path
) -> None:
    runner = ScriptedRunner([writes(CALC_FIXED, cost=0.25, input_tokens=1000)])
    rep = reporter()
    result = await make_job_runner(tmp_path, runner).run(request(origin), rep)

    assert result.succeeded, result.message
    assert (result.tests_passed, result.tests_failed, result.tests_ok) == (2, 0, True)
    assert result.cost_usd == 0.25 and result.input_tokens == 1000 and result.num_turns == 2
    assert result.session_id == "sess-1" and result.fix_rounds == 0
    assert result.branch == "claude/issue-3-add-subtracts"
    assert result.changed_files == ["calc.py"]
    assert branch_file(origin, result.branch, "calc.py") == CALC_FIXED
    message = subprocess_log(origin, result.branch)
    assert "Task ID: 7" in message
    spec = runner.specs[0]
    assert "# GitHub Issue Resolution" in spec.prompt and "add(2, 3) returns -1" in spec.prompt
    assert spec.home == tmp_path / "ws" / "homes" / "task-7"
    assert spec.env["CLUSTER_TASK_ID"] == "7" and spec.resume_session_id is None
    assert {"workspace", "tests", "delivered", "runner_finished"} <= set(kinds(rep))
    assert [phase for _, phase in rep._control] and rep._control[0][1].phase == "testing"  # type: ignore[union-attr]
    assert not list((tmp_path / "ws" / "tasks").glob("task-*")), "the worktree was released"


def subprocess_log(bare: Path, branch: str) -> str:
    from tests.support.agents import git

    return git(bare, "log", "-1", "--format=%B", branch)


async def test_a_failing_test_goes_back_to_the_same_session(tmp_path: Path, origin: Path) -> None:
    runner = ScriptedRunner(
        [writes(HALF_FIXED, session="sess-A"), writes(CALC_FIXED, session="sess-A")]
    )
    result = await make_job_runner(tmp_path, runner).run(request(origin), reporter())

    assert result.succeeded, result.message
    assert result.fix_rounds == 1 and (result.tests_passed, result.tests_failed) == (2, 0)
    assert result.cost_usd == pytest.approx(0.02) and result.num_turns == 4
    fix = runner.specs[1]
    assert fix.resume_session_id == "sess-A"
    assert "fix round 1 of 2" in fix.prompt and "test_add_zero" in fix.prompt
    assert fix.home == runner.specs[0].home


async def test_tests_still_red_after_the_rounds_push_the_branch_and_fail(
    tmp_path: Path, origin: Path
) -> None:
    runner = ScriptedRunner([writes(HALF_FIXED)])
    job = make_job_runner(tmp_path, runner, max_fix_rounds=1)
    result = await job.run(request(origin), reporter())

    assert not result.succeeded
    assert result.error_category == ErrorCategory.TESTS_FAILED
    assert (result.tests_passed, result.tests_failed, result.tests_ok) == (1, 1, False)
    assert result.fix_rounds == 1 and len(runner.specs) == 2
    assert "test_add_zero" in result.log_excerpt
    assert branch_file(origin, "claude/issue-3-add-subtracts", "calc.py") == HALF_FIXED


async def test_no_changes_is_its_own_failure(tmp_path: Path, origin: Path) -> None:
    runner = ScriptedRunner([lambda spec: ok()])
    result = await make_job_runner(tmp_path, runner).run(request(origin), reporter())
    assert result.error_category == ErrorCategory.NO_CHANGES
    assert result.cost_usd == 0.01


async def test_a_runner_failure_keeps_its_category_and_usage(tmp_path: Path, origin: Path) -> None:
    limited = RunnerOutcome(
        succeeded=False,
        error_category=ErrorCategory.RATE_LIMITED,
        message="429",
        retry_after_seconds=42,
        cost_usd=0.5,
    )
    runner = ScriptedRunner([lambda spec: limited])
    result = await make_job_runner(tmp_path, runner).run(request(origin), reporter())
    assert result.error_category == ErrorCategory.RATE_LIMITED
    assert result.retry_after_seconds == 42 and result.cost_usd == 0.5
    assert result.tests_passed is None


async def test_an_unreachable_repository_is_a_workspace_error(tmp_path: Path) -> None:
    runner = ScriptedRunner([writes(CALC_FIXED)])
    missing = tmp_path / "nowhere.git"
    result = await make_job_runner(tmp_path, runner).run(request(missing), reporter())
    assert result.error_category == ErrorCategory.WORKSPACE_ERROR
    assert runner.specs == []


async def test_a_follow_up_continues_the_branch_with_the_feedback(
    tmp_path: Path, origin: Path
) -> None:
    job = make_job_runner(tmp_path, ScriptedRunner([writes(CALC_FIXED)]))
    first = await job.run(request(origin), reporter())
    assert first.succeeded
    (tmp_path / "ws" / "homes" / "task-7" / ".claude" / "projects" / "p").mkdir(parents=True)
    (tmp_path / "ws" / "homes" / "task-7" / ".claude" / "projects" / "p" / "sess-1.jsonl").touch()

    runner = ScriptedRunner([writes(CALC_FIXED + "# reviewed\n")])
    job.runner = runner
    follow = request(
        origin,
        run_id=2,
        attempt=2,
        branch=first.branch,
        feedback="Please add a comment.",
        resume_session_id="sess-1",
    )
    result = await job.run(follow, reporter())

    assert result.succeeded, result.message
    spec = runner.specs[0]
    assert spec.resume_session_id == "sess-1"
    assert "Please add a comment." in spec.prompt and "# GitHub Issue Resolution" not in spec.prompt
    assert branch_file(origin, first.branch or "", "calc.py") == CALC_FIXED + "# reviewed\n"


async def test_a_pull_request_is_opened_with_the_measured_results(
    tmp_path: Path, origin: Path
) -> None:
    opened: list[PullRequestRequest] = []

    async def opener(pr: PullRequestRequest) -> tuple[int, str]:
        opened.append(pr)
        return 12, "https://github.example/octo/app/pull/12"

    asked: list[tuple[int, str]] = []

    async def tokens(run_id: int, purpose: str) -> str:
        asked.append((run_id, purpose))
        return "ghs_token"

    job = make_job_runner(
        tmp_path, ScriptedRunner([writes(CALC_FIXED)]), open_pull_request=opener, git_tokens=tokens
    )
    req = request(origin, github_repository="octo/app", open_pull_request=True)
    result = await job.run(req, reporter())

    assert result.succeeded and result.pr_number == 12 and result.pr_url
    pr = opened[0]
    assert (pr.repository, pr.head, pr.base) == ("octo/app", result.branch, "main")
    assert "2 passed, 0 failed" in pr.body and "Closes #3" in pr.body and "Task ID: 7" in pr.body
    assert "$0.0100" in pr.body
    assert pr.token == "ghs_token" and asked == [(1, "deliver")], "asked for at delivery"


async def test_cancelling_reports_cancelled_and_releases_the_worktree(
    tmp_path: Path, origin: Path
) -> None:
    import asyncio

    started = asyncio.Event()

    async def hang(spec: RunSpec) -> RunnerOutcome:
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("not cancelled")

    job = make_job_runner(tmp_path, ScriptedRunner([hang]), max_fix_rounds=0)
    job.workspaces.reuse_slots = False
    task = asyncio.create_task(job.run(request(origin), reporter()))
    await asyncio.wait_for(started.wait(), 20)
    task.cancel()
    result = await asyncio.wait_for(task, 20)
    assert result.error_category == ErrorCategory.CANCELLED
    assert not list((tmp_path / "ws" / "tasks").glob("task-*/"))
    assert CALC_BUGGY  # the origin is untouched
    assert branch_file(origin, "claude/issue-3-add-subtracts", "calc.py") is None


async def test_the_default_opener_opens_the_pull_request_on_github(
    tmp_path: Path, origin: Path
) -> None:
    from tests.fakes.github_api import FakeGitHub

    with FakeGitHub() as gh:
        token = gh.add_token("ghs_run_token")
        gh.add_repo("octo/app")

        async def tokens(run_id: int, purpose: str) -> str:
            return token

        job = make_job_runner(
            tmp_path,
            ScriptedRunner([writes(CALC_FIXED)]),
            github_api_url=gh.url,
            git_tokens=tokens,
        )
        req = request(origin, **_pr())
        result = await job.run(req, reporter())
        assert result.succeeded, result.message
        [pr] = gh.pull_requests("octo/app")
        assert (result.pr_number, result.pr_url) == (pr["number"], pr["html_url"])
        assert pr["head"]["ref"] == result.branch and pr["base"]["ref"] == "main"
        assert "2 passed, 0 failed" in pr["body"]

        again = await job.run(request(origin, run_id=2, attempt=2, **_pr()), reporter())
        assert again.succeeded and again.pr_number == pr["number"]  # updated, not a second PR
        assert len(gh.pull_requests("octo/app")) == 1


def _pr() -> dict[str, Any]:
    return {"github_repository": "octo/app", "open_pull_request": True}


async def test_a_sandbox_that_cannot_start_is_the_agents_fault(
    tmp_path: Path, origin: Path
) -> None:
    """sandbox_error: the coordinator requeues the task without a retry (SPEC §6)."""
    from claude_cluster.agent.sandbox import Sandbox

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = JobConfig(
        agent_id="agent-t",
        homes_dir=tmp_path / "ws" / "homes",
        test_timeout=30,
        sandbox=Sandbox.for_agent(enabled=True),
        state_dir=blocker / "runs",  # the run's scratch cannot be made under a file
    )
    job_runner = JobRunner(
        config,
        workspaces=WorkspaceManager(tmp_path / "ws", git_timeout=30),
        runner=ScriptedRunner([writes(CALC_FIXED)]),
    )
    rep = reporter()
    result = await job_runner.run(request(origin), rep)
    assert (result.succeeded, result.error_category) == (False, ErrorCategory.SANDBOX_ERROR)
    assert "the run's sandbox could not start" in result.message
    assert "sandbox" in kinds(rep)


async def test_a_full_disk_is_the_agents_fault(tmp_path: Path, origin: Path) -> None:
    import errno

    def no_space(spec: RunSpec) -> RunnerOutcome:
        raise OSError(errno.ENOSPC, "No space left on device")

    result = await make_job_runner(tmp_path, ScriptedRunner([no_space])).run(
        request(origin), reporter()
    )
    assert (result.succeeded, result.error_category) == (False, ErrorCategory.DISK_FULL)
    assert "no space left on the agent's disk" in result.message


async def test_an_unconfined_run_says_so_in_its_events_and_its_pull_request(
    tmp_path: Path, origin: Path
) -> None:
    """RUN_SANDBOX=off (the daemon then gives no sandbox): a warning event, the real
    credential for the runner, and the pull request body opens with the warning."""
    from claude_cluster.agent.pull_request import UNCONFINED_NOTE

    opener = Opener()

    async def tokens(run_id: int, purpose: str) -> str:
        return "ghs_token"

    runner = ScriptedRunner([writes(CALC_FIXED)])
    job = make_job_runner(  # no sandbox: what the daemon gives runs with RUN_SANDBOX=off
        tmp_path,
        runner,
        runner_env={"ANTHROPIC_API_KEY": "sk-ant-real"},
        open_pull_request=opener,
        git_tokens=tokens,
    )
    rep = reporter()
    result = await job.run(request(origin, **_pr()), rep)

    assert result.succeeded, result.message
    [sandbox] = [e for e in rep._events.first(len(rep._events)) if e.kind == "sandbox"]
    assert (sandbox.level, sandbox.data) == ("warning", {"sandbox": "off"})
    assert "RUN_SANDBOX=off" in sandbox.message and "NOT confined" in sandbox.message
    env = runner.specs[0].env
    assert env["ANTHROPIC_API_KEY"] == "sk-ant-real", "no gateway: the runner has the real key"
    assert "HTTPS_PROXY" not in env and "ANTHROPIC_BASE_URL" not in env
    [pr] = opener.opened
    note = UNCONFINED_NOTE.format(agent="agent-t")
    assert pr.body.startswith(note) and pr.body.count("not sandboxed") == 1
    assert "`RUN_SANDBOX=off` on agent agent-t" in note
    assert "2 passed, 0 failed" in pr.body[len(note) :], "the usual body follows"
