"""The seed's "# GitHub Issue Resolution" prompt, fix rounds and follow-ups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from claude_cluster.agent.prompt import MAX_PROMPT_BYTES, feedback_prompt, fix_prompt, issue_prompt
from claude_cluster.domain.wire import ExecuteTaskRequest


def request(**kw: Any) -> ExecuteTaskRequest:
    values: dict[str, Any] = {
        "run_id": 1,
        "task_id": 2,
        "title": "Crash on   empty input",
        "description": "Steps: run it with ''.",
        "github_repository": "octo/app",
        "github_issue_number": 42,
        "repository_url": "https://github.com/octo/app.git",
        "requirements": ["backend"],
        "issue_comments": ["first", "  ", "second"],
    }
    values.update(kw)
    return ExecuteTaskRequest(**values)


def test_the_issue_prompt_has_the_seeds_sections(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "src").mkdir()
    (tmp_path / ".hidden").write_text("")
    prompt = issue_prompt(request(), specialties=["backend", "frontend"], worktree=tmp_path)
    assert prompt.startswith("# GitHub Issue Resolution")
    assert "## Issue #42: Crash on empty input" in prompt
    assert "Steps: run it with ''." in prompt
    assert "- first\n- second" in prompt
    assert "Detected technologies: Python" in prompt and "- src/" in prompt
    assert ".hidden" not in prompt
    assert "- backend: Focus on server-side" in prompt and "frontend:" not in prompt
    for instruction in ("Understand", "Implement", "conventions", "tests", "documentation"):
        assert instruction in prompt
    assert "Review feedback" not in prompt


def test_a_follow_up_adds_the_feedback() -> None:
    prompt = issue_prompt(request(feedback="Please rename foo."))
    assert prompt.rstrip().endswith("Please rename foo.")
    resumed = feedback_prompt(request(feedback="Please rename foo."))
    assert "Please rename foo." in resumed and "#42" in resumed
    assert "# GitHub Issue Resolution" not in resumed


def test_fix_prompt_keeps_the_end_of_the_output() -> None:
    output = "x" * 50_000 + "\nFAILED test_calc.py::test_add"
    prompt = fix_prompt("python -m pytest -q", output, round_number=1, rounds=2)
    assert "fix round 1 of 2" in prompt and "`python -m pytest -q`" in prompt
    assert prompt.count("FAILED test_calc.py::test_add") == 1 and "bytes cut" in prompt


def test_huge_issue_text_still_fits_in_one_argument() -> None:
    wide = "界" * 200_000  # 3 bytes each
    prompt = issue_prompt(
        request(description=wide, issue_comments=[wide] * 20, feedback=wide, title=wide)
    )
    assert len(prompt.encode()) <= MAX_PROMPT_BYTES
    assert "## Instructions" in prompt  # the instructions survive the clipping
    assert "\x00" not in issue_prompt(request(description="a\x00b"))
