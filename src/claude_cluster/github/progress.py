"""The one progress comment a task keeps on its issue, as text.

:func:`render_progress` turns a :class:`Progress` (what the coordinator knows now) into the
comment's body; the coordinator edits the same comment as the task moves, so the issue
shows one up-to-date account instead of a trail of comments:
queued → workspace → setup and baseline → agent → tests → delivery, then the result. The
tests on the base commit (:class:`Baseline`) show as soon as they have run, and the end
shows them before → after. While the run is active, the agent step shows the turns and
cost its finished rounds and the round in progress have reported so far ("~$0.12" while
part of it is the agent's estimate of the running round).
"""

from __future__ import annotations

from dataclasses import dataclass

from claude_cluster.github.pr import TestResults, Usage, _fence, render_test_results

__all__ = ["STEPS", "Baseline", "Progress", "render_progress"]

#: the steps of a run, in order, as the agent's ``phase`` events name them
STEPS: tuple[tuple[str, str], ...] = (
    ("queued", "Queued"),
    ("workspace", "Workspace"),
    ("setup", "Test environment and baseline"),
    ("agent", "Agent working"),
    ("tests", "Tests"),
    ("deliver", "Branch and pull request"),
)
#: phases the agent reports that belong to a step of :data:`STEPS`
_PART_OF = {"baseline": "setup", "fix": "agent"}
_DONE, _NOW, _TODO = "✅", "⏳", "⬜"


@dataclass(frozen=True)
class Baseline:
    """The tests on the base commit, before the agent ran."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    #: why there are no counts: ``skipped`` (the repository's contract turns the baseline
    #: off) or ``untested`` (the tests could not run on the base commit)
    missing: str | None = None

    def line(self) -> str:
        """``1 passed, 2 failed``, or why there are no counts."""
        if self.missing == "skipped":
            return "baseline skipped (the repository's contract)"
        if self.missing is not None:
            return "no baseline (the tests could not run on the base commit)"
        parts = [f"{self.passed} passed", f"{self.failed} failed"]
        if self.errors:
            parts.append(f"{self.errors} errors")
        return ", ".join(parts)


@dataclass(frozen=True)
class Progress:
    task_id: int
    #: the task's status (``queued``, ``in_progress``, ``review``, ``failed``, …)
    status: str
    #: the latest run's current step (an entry of :data:`STEPS`), None before a run
    phase: str | None = None
    attempt: int = 0
    agent: str | None = None
    #: the latest run's cost and tests, when it has ended
    usage: Usage | None = None
    #: the turns and cost the active run's finished agent rounds and the round in
    #: progress reported so far (the dashboard's "cost so far"); None once it has ended or
    #: before its agent's first model call
    so_far: Usage | None = None
    #: part of ``so_far`` is the agent's estimate for the round in progress: shown "~$"
    so_far_estimated: bool = False
    tests: TestResults | None = None
    #: the latest run's tests on the base commit, once they have run (or been skipped)
    baseline: Baseline | None = None
    pr_url: str | None = None
    branch: str | None = None
    #: why the task failed, or why the last attempt will be retried
    reason: str | None = None
    retrying: bool = False


def render_progress(p: Progress) -> str:
    """The comment's body for the task's state ``p``."""
    head = {
        "completed": "✅ **Claude Code Cluster finished this issue.**",
        "review": "✅ **Claude Code Cluster opened a pull request.**",
        "failed": "❌ **Claude Code Cluster could not complete this issue.**",
        "cancelled": "⏹️ **Claude Code Cluster stopped: the task was cancelled.**",
    }.get(p.status, "🤖 **Claude Code Cluster is working on this issue.**")
    lines = [head, ""]
    current = _step_index(p)
    for index, (name, label) in enumerate(STEPS):
        mark = _DONE if index < current else (_NOW if index == current else _TODO)
        detail = ""
        if index == current and index > 0 and p.agent:
            detail = f" on `{p.agent}`" + (f" (attempt {p.attempt})" if p.attempt > 1 else "")
        if name == "agent" and index <= current and p.so_far is not None:
            turns = p.so_far.num_turns
            approx = "~" if p.so_far_estimated else ""
            detail += (
                f" — {turns} turn{'' if turns == 1 else 's'}, "
                f"{approx}${p.so_far.cost_usd:.2f} so far"
            )
        lines.append(f"- {mark} {label}{detail}")
    lines.append("")
    if p.pr_url:
        lines.append(f"**Pull request:** {p.pr_url}")
    elif p.branch and p.status == "completed":
        lines.append(f"**Branch:** `{p.branch}`")
    if p.tests is not None and p.baseline is not None:
        after = render_test_results(p.tests)
        lines.append(f"**Tests (before → after):** {p.baseline.line()} → {after}")
    elif p.tests is not None:
        lines.append(f"**Tests:** {render_test_results(p.tests)}")
    elif p.baseline is not None:
        lines.append(f"**Tests before the run (base commit):** {p.baseline.line()}")
    if p.usage is not None:
        lines.append(f"**Cost:** {p.usage.line()}")
    if p.reason:
        what = "Attempt failed, retrying" if p.retrying else "Reason"
        lines += [f"**{what}:**", "", _fence(p.reason)]
        if p.branch and p.status == "failed":
            lines.append(f"\nThe work so far is on branch `{p.branch}`.")
    return "\n".join([*lines, "", f"Task ID: {p.task_id}"]).replace("\n\n\n", "\n\n")


def _step_index(p: Progress) -> int:
    """Steps before this index are done; a finished task has them all done."""
    if p.status in ("completed", "review"):
        return len(STEPS)
    names = [name for name, _ in STEPS]
    phase = _PART_OF.get(p.phase or "", p.phase)
    if phase in names:
        return names.index(phase)
    return 0 if p.status in ("queued", "pending", "analyzing", "assigned") else 1
