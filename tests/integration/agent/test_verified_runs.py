"""Verified runs on real repositories: the contract, setup, the baseline, what is to blame,
and what is delivered when tests fail or cannot run (scripted runners, real git and tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from claude_cluster.agent.job_runner import JobRunner
from claude_cluster.agent.run_context import JobConfig
from claude_cluster.agent.workspace import WorkspaceManager
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.runners import RunnerOutcome, RunSpec
from tests.integration.agent.test_job_runner import kinds, reporter, request
from tests.support.agents import (
    CALC_BUGGY,
    CALC_FIXED,
    CALC_TEST,
    Opener,
    ScriptedRunner,
    branch_file,
    branches,
    git,
    ok,
    writes,
)

pytestmark = pytest.mark.timeout(90)

OTHER_BROKEN = "def test_unrelated():\n    assert 'legacy' == 'fixed'\n"


def make_repo(root: Path, files: dict[str, str]) -> Path:
    work, bare = root / "seed", root / "origin.git"
    work.mkdir(parents=True)
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "start")
    git(work, "push", "-q", str(bare), "main")
    return bare


def job(tmp_path: Path, runner: ScriptedRunner, opener: Opener | None = None) -> JobRunner:
    config = JobConfig(
        agent_id="agent-v",
        homes_dir=tmp_path / "ws" / "homes",
        max_fix_rounds=1,
        test_timeout=60,
        git_user_name="Agent",
        git_user_email="agent@example.invalid",
        dashboard_url="http://coordinator.test:8080",
    )
    workspaces = WorkspaceManager(tmp_path / "ws", git_timeout=30)

    async def token(run_id: int, purpose: str) -> str | None:
        return "ghs_run_token"

    return JobRunner(
        config,
        workspaces=workspaces,
        runner=runner,
        open_pull_request=opener or Opener(),
        git_tokens=token,
    )


def pr_request(origin: Path, **kw: Any) -> Any:
    return request(origin, open_pull_request=True, **kw)


def stop(category: ErrorCategory) -> Any:
    def step(spec: RunSpec) -> RunnerOutcome:
        (spec.cwd / "calc.py").write_text(CALC_FIXED)
        outcome = ok()
        return RunnerOutcome(
            **{**outcome.__dict__, "succeeded": False, "error_category": category,
               "message": f"stopped: {category.value}"}
        )  # fmt: skip

    return step


async def test_an_invalid_contract_fails_before_any_model_call(tmp_path: Path) -> None:
    origin = make_repo(
        tmp_path / "r",
        {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST, ".claude-cluster.yml": "tset: x\n"},
    )
    runner = ScriptedRunner([writes(CALC_FIXED)])
    rep = reporter()
    result = await job(tmp_path, runner).run(request(origin), rep)
    assert result.error_category == ErrorCategory.CONTRACT_ERROR
    assert "line 1, key 'tset': unknown key" in result.message
    assert runner.specs == []  # no model call
    assert "contract" in kinds(rep)


async def test_a_run_cannot_loosen_its_contract_it_is_read_from_the_base(tmp_path: Path) -> None:
    """The model rewrites the contract to 'push' on failure; the base's 'fail' holds."""
    origin = make_repo(
        tmp_path / "r",
        {
            "calc.py": CALC_BUGGY,
            "test_calc.py": CALC_TEST,
            ".claude-cluster.yml": "when_tests_fail: fail\n",
        },
    )

    def cheat(spec: RunSpec) -> RunnerOutcome:
        (spec.cwd / ".claude-cluster.yml").write_text("when_tests_fail: push\nbaseline: false\n")
        (spec.cwd / "calc.py").write_text(CALC_FIXED)
        # and a test of its own that fails: newly failing, so the run is to blame
        (spec.cwd / "test_calc.py").write_text(CALC_TEST + "\ndef test_more():\n    assert 0\n")
        return ok()

    result = await job(tmp_path, ScriptedRunner([cheat])).run(request(origin), reporter())
    assert result.error_category == ErrorCategory.TESTS_FAILED
    assert "nothing was delivered" in result.message
    assert branches(origin) == ["main"]


async def test_a_failure_from_before_the_run_is_not_blamed_on_it(tmp_path: Path) -> None:
    origin = make_repo(
        tmp_path / "r",
        {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST, "test_legacy.py": OTHER_BROKEN},
    )
    opener = Opener()
    rep = reporter()
    result = await job(tmp_path, ScriptedRunner([writes(CALC_FIXED)]), opener).run(
        pr_request(origin), rep
    )
    assert result.succeeded, result.message
    assert (result.tests_passed, result.tests_failed) == (2, 1)
    assert result.fix_rounds == 0  # the pre-existing failure earns no fix round
    (pr,) = opener.opened
    assert not pr.draft
    assert "Against the base commit:" in pr.body
    assert "- 1 fixed: test_calc.py::test_add" in pr.body
    assert "still failing (failed before the run too): test_legacy.py::test_unrelated" in pr.body
    proof = pr.body.split("## Proof of Work", 1)[1]
    assert "exited 1 in " in proof and "after 0 fix round(s)" in proof
    assert "On the base commit, before the run: 1 passed, 2 failed" in proof
    assert "Files changed: 1" in proof and "Turns: 2;" in proof
    assert "Claude session: `sess-1`" in proof
    assert "The run on the dashboard: http://coordinator.test:8080/tasks/7" in proof
    assert {"baseline", "tests", "test_changes"} <= set(kinds(rep))
    # what the coordinator's progress comment shows as "before"
    (base,) = [e.data for e in rep._events.first(len(rep._events)) if e.kind == "baseline"]
    assert (base["ran"], base["passed"], base["failed"]) == (True, 1, 2)


async def test_a_contract_that_turns_the_baseline_off_says_so(tmp_path: Path) -> None:
    origin = make_repo(
        tmp_path / "r",
        {
            "calc.py": CALC_BUGGY,
            "test_calc.py": CALC_TEST,
            ".claude-cluster.yml": "baseline: false\n",
        },
    )
    rep = reporter()
    result = await job(tmp_path, ScriptedRunner([writes(CALC_FIXED)])).run(request(origin), rep)
    assert result.succeeded, result.message
    events = rep._events.first(len(rep._events))
    assert [e.data for e in events if e.kind == "baseline"] == [{"ran": False, "status": "skipped"}]
    assert "baseline" not in [e.data.get("phase") for e in events if e.kind == "phase"]


async def test_a_regression_gets_a_fix_round_that_names_it(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "r", {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST})
    breaks_zero = "def add(a, b):\n    return a + b if a else 1\n"
    runner = ScriptedRunner([writes(breaks_zero), writes(CALC_FIXED)])
    result = await job(tmp_path, runner).run(request(origin), reporter())
    assert result.succeeded, result.message
    assert result.fix_rounds == 1
    assert "Fix these tests: test_calc.py::test_add_zero" in runner.specs[1].prompt


async def test_untested_runs_deliver_a_draft_by_default_and_say_why(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "r", {"notes.txt": "nothing to test here\n"})
    opener = Opener()
    rep = reporter()
    result = await job(tmp_path, ScriptedRunner([writes("done\n", path="notes.txt")]), opener).run(
        pr_request(origin), rep
    )
    assert result.succeeded, result.message
    assert result.tests_ok is None
    assert "untested: no test command configured or detected" in result.message
    (pr,) = opener.opened
    assert pr.draft
    assert "⚠️ **Untested:** no test command configured or detected" in pr.body
    assert "untested" in kinds(rep)


async def test_untested_with_fail_delivers_nothing(tmp_path: Path) -> None:
    origin = make_repo(
        tmp_path / "r", {"notes.txt": "x\n", ".claude-cluster.yml": "when_untested: fail\n"}
    )
    result = await job(tmp_path, ScriptedRunner([writes("y\n", path="notes.txt")])).run(
        request(origin), reporter()
    )
    assert result.error_category == ErrorCategory.UNTESTED
    assert "nothing was delivered" in result.message
    assert branches(origin) == ["main"]


async def test_a_failed_setup_step_makes_the_run_untested(tmp_path: Path) -> None:
    contract = (
        "setup:\n  - name: deps\n    run: echo installing; exit 3\ntest: python -m pytest -q\n"
    )
    origin = make_repo(
        tmp_path / "r",
        {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST, ".claude-cluster.yml": contract},
    )
    opener = Opener()
    rep = reporter()
    result = await job(tmp_path, ScriptedRunner([writes(CALC_FIXED)]), opener).run(
        pr_request(origin), rep
    )
    assert result.succeeded and result.tests_ok is None
    assert "untested: setup failed: setup step 'deps' exited 3" in result.message
    (pr,) = opener.opened
    assert pr.draft and "setup failed" in pr.body
    setup = [e for e in rep._events.first(len(rep._events)) if e.kind == "setup"]
    assert setup and "installing" in setup[0].data["output_tail"]


async def test_the_contracts_test_command_and_instructions_are_used(tmp_path: Path) -> None:
    contract = (
        "setup:\n  - run: echo ready > .setup-done\n"
        "test: python -m pytest -q -rA test_calc.py\n"
        "instructions: Never touch the README.\n"
        "budget_usd: 2\nmax_turns: 7\nmodel: claude-test-model\n"
    )
    origin = make_repo(
        tmp_path / "r",
        {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST, ".claude-cluster.yml": contract},
    )
    runner = ScriptedRunner([writes(CALC_FIXED)])
    result = await job(tmp_path, runner).run(request(origin, budget_usd=5), reporter())
    assert result.succeeded, result.message
    assert result.tests_command == "python -m pytest -q -rA test_calc.py"
    spec = runner.specs[0]
    assert "Never touch the README." in spec.prompt
    assert (spec.max_turns, spec.model) == (7, "claude-test-model")
    assert spec.budget_usd == 2  # the contract asked for less than the task's 5


async def test_max_turns_pushes_the_work_as_a_checkpoint(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "r", {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST})
    runner = ScriptedRunner([stop(ErrorCategory.MAX_TURNS)])
    rep = reporter()
    result = await job(tmp_path, runner).run(request(origin), rep)
    assert result.error_category == ErrorCategory.MAX_TURNS
    assert "pushed to branch claude/issue-3-add-subtracts as a checkpoint" in result.message
    assert branch_file(origin, "claude/issue-3-add-subtracts", "calc.py") == CALC_FIXED
    assert "checkpoint" in kinds(rep)
