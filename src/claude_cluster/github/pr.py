"""What the cluster writes on GitHub: pull request title and body, and issue comments.

The body carries the upstream sections (Summary, Changes, Task Information, Test Results,
Agent, Cost) with the run's real numbers: the test command and its counts exactly as
measured, never a fixed "tests passed". A bare ``Task ID: <id>`` line tells people which
task it is; the coordinator never reads it back (anyone can write it into a pull request),
it knows a task's pull request by the number its run recorded. Comments say "task 12",
not "task #12", because GitHub would link ``#12`` to issue 12.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: GitHub refuses longer PR titles
TITLE_MAX = 256
#: GitHub refuses bodies over 65,536 characters; keep well clear
_SUMMARY_MAX = 20_000
_OUTPUT_MAX = 6_000


@dataclass(frozen=True)
class TestResults:
    """The verification step's outcome, as measured by the agent."""

    __test__ = False  # not a pytest test class despite the name

    command: str
    passed: int
    failed: int
    skipped: int = 0
    errors: int = 0
    duration_seconds: float | None = None
    output_tail: str | None = None  #: the last lines of the test output

    @property
    def ok(self) -> bool:
        """Green: something ran and nothing failed."""
        return self.failed == 0 and self.errors == 0 and self.passed > 0

    def line(self) -> str:
        """``✅ 42 passed, 0 failed, 3 skipped in 12.3 s``: the counts as measured."""
        mark = "✅" if self.ok else ("⚠️" if self.failed == self.errors == 0 else "❌")
        parts = [f"{self.passed} passed", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.errors:
            parts.append(f"{self.errors} errors")
        text = f"{mark} {', '.join(parts)}"
        if self.duration_seconds is not None:
            text += f" in {self.duration_seconds:.1f} s"
        if self.passed == self.failed == self.errors == 0:
            text += " (no tests ran)"
        return text


@dataclass(frozen=True)
class Usage:
    """The model usage of a run, from the CLI's ``result`` line."""

    cost_usd: float
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    #: the model's turns (not part of :meth:`line`: the PR body states them with the time)
    num_turns: int = 0

    def line(self) -> str:
        text = f"${self.cost_usd:.4f} USD; {self.input_tokens:,} input, "
        text += f"{self.output_tokens:,} output tokens"
        if self.cache_read_tokens or self.cache_creation_tokens:
            text += f" (cache: {self.cache_read_tokens:,} read, "
            text += f"{self.cache_creation_tokens:,} written)"
        return text


@dataclass(frozen=True)
class PullRequestInfo:
    """Everything the PR body reports about one task's run."""

    task_id: int
    issue_number: int
    issue_title: str
    summary: str
    changes: Sequence[str] = ()  #: changed files or one-line change descriptions
    tests: TestResults | None = None  #: None: the tests did not run
    agent: str = ""
    model: str | None = None
    attempt: int = 1
    branch: str = ""
    usage: Usage | None = None
    duration_seconds: float | None = None
    #: why the tests did not run (the run is untested), None when they ran
    untested: str | None = None
    #: against the base commit: fixed, newly failing, still failing (one sentence each)
    test_changes: Sequence[str] = ()
    #: what a reviewer can check the run by, one line each (exit code, baseline, session…)
    proof: Sequence[str] = ()


def pr_title(issue_number: int, issue_title: str) -> str:
    """``[Claude Code] Fix issue #7: <title>``, one line, at most :data:`TITLE_MAX`."""
    title = f"[Claude Code] Fix issue #{issue_number}: {' '.join(issue_title.split())}"
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"


def render_pr_body(info: PullRequestInfo) -> str:
    """The pull request body; see the module docstring for what it promises."""
    changes = "\n".join(f"- {c}" for c in info.changes) or "_No change list was reported._"
    task = [
        f"- Issue: #{info.issue_number} {info.issue_title}",
        f"- Attempt: {info.attempt}",
    ]
    if info.branch:
        task.append(f"- Branch: `{info.branch}`")
    agent = [f"- Agent: {info.agent or 'unknown'}"]
    if info.model:
        agent.append(f"- Model: {info.model}")
    if info.duration_seconds is not None:
        agent.append(f"- Run time: {info.duration_seconds:.0f} s")
    sections = [
        "## Summary\n\n" + (_clip(info.summary.strip(), _SUMMARY_MAX) or "_No summary._"),
        "## Changes\n\n" + changes,
        "## Task Information\n\n" + "\n".join(task),
        "## Test Results\n\n" + _tests_section(info),
        *(["## Proof of Work\n\n" + "\n".join(f"- {p}" for p in info.proof)] if info.proof else []),
        "## Agent\n\n" + "\n".join(agent),
        "## Cost\n\n" + (info.usage.line() if info.usage else "_Not reported._"),
        f"Closes #{info.issue_number}\n\nTask ID: {info.task_id}",
    ]
    return "\n\n".join(sections) + "\n"


def _tests_section(info: PullRequestInfo) -> str:
    text = render_test_results(info.tests)
    if info.untested:
        text = f"⚠️ **Untested:** {_clip(info.untested, 500)}\n\n{text}"
    if info.test_changes:
        text += "\n\nAgainst the base commit:\n\n" + "\n".join(f"- {c}" for c in info.test_changes)
    return text


def render_test_results(tests: TestResults | None) -> str:
    if tests is None:
        return "⚠️ The tests were not run."
    text = f"{tests.line()}\n\nCommand: `{tests.command}`"
    if tests.output_tail:
        tail = _clip(tests.output_tail.rstrip(), _OUTPUT_MAX, keep_end=True)
        text += f"\n\n<details><summary>Test output (last lines)</summary>\n\n{_fence(tail)}"
        text += "\n\n</details>"
    return text


def render_completed_comment(task_id: int, *, pr_number: int) -> str:
    return f"🎉 Completed by Claude Code Cluster: #{pr_number} was merged.\n\nTask ID: {task_id}"


def _clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :] if keep_end else text[: limit - 1] + "…"


def _fence(text: str) -> str:
    """A code block that ``text`` cannot close early, whatever backticks it holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"
