"""What a run changed in the tests: the base commit's results against the run's.

Before the agent starts, the tests run once on the base commit (the *baseline*). The run's
own test results are then read against it, so a pull request can say what it fixed and
what it broke, and a failure that was there before is not blamed on the run. Tests are
compared by name where the runner names them (see ``agent/testparse.py``); otherwise by
counts only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Comparison", "TestVerdict", "compare", "judge"]

_BAD = frozenset({"failed", "error"})
#: names listed per group in a report; the counts stay exact beyond it
MAX_LISTED = 50


@dataclass(frozen=True)
class Comparison:
    """Test by test, the run against the baseline."""

    #: failed (or errored) before, pass now: what the run fixed
    fixed: tuple[str, ...] = ()
    #: passed before (or did not exist) and fail now: what the run broke or added failing
    broken: tuple[str, ...] = ()
    #: failed before and still fail: not the run's doing, not fixed either
    still_failing: tuple[str, ...] = ()
    #: tests that did not exist before and pass now
    added: tuple[str, ...] = ()
    #: tests that existed before and are gone now
    removed: tuple[str, ...] = ()

    @property
    def regressions(self) -> bool:
        """Whether the run made anything worse (the only failures a fix round targets)."""
        return bool(self.broken)

    def lines(self) -> list[str]:
        """Markdown-free sentences for a pull request body, a comment or a log."""
        out = []
        for label, names in (
            ("fixed", self.fixed),
            ("newly failing", self.broken),
            ("still failing (failed before the run too)", self.still_failing),
            ("added and passing", self.added),
            ("removed", self.removed),
        ):
            if names:
                shown = ", ".join(names[:MAX_LISTED])
                more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
                out.append(f"{len(names)} {label}: {shown}{more}")
        return out


def compare(before: Mapping[str, str], after: Mapping[str, str]) -> Comparison:
    """Compare two ``{test name: passed|failed|error|skipped}`` maps.

    A skipped test counts as neither passing nor failing: a test skipped before and failing
    now is newly failing; one failing before and skipped now is not called fixed.
    """
    fixed: list[str] = []
    broken: list[str] = []
    still: list[str] = []
    added: list[str] = []
    for name in sorted(after):
        now, then = after[name], before.get(name)
        if now in _BAD:
            (still if then in _BAD else broken).append(name)
        elif now == "passed":
            if then in _BAD:
                fixed.append(name)
            elif then is None:
                added.append(name)
    removed = [name for name in sorted(before) if name not in after]
    return Comparison(tuple(fixed), tuple(broken), tuple(still), tuple(added), tuple(removed))


@dataclass(frozen=True)
class TestVerdict:
    """What the run's test results mean, given the baseline."""

    __test__ = False  # not a pytest test class, despite the name

    #: the run is to blame for failures (or the issue's own tests still fail)
    failing: bool
    #: the tests to name in a fix round and in the report
    blamed: tuple[str, ...] = ()
    comparison: Comparison | None = None


def judge(
    before: Mapping[str, str] | None,
    after: Mapping[str, str],
    *,
    ok: bool,
    issue_text: str = "",
) -> TestVerdict:
    """Whether a run's failing tests are its own doing.

    Without named outcomes on both sides only the exit status speaks (``ok``). With them,
    a failing run is to blame for what it broke, and for the tests that failed before and
    still fail when the issue names them (the issue is about them); other failures that
    were there before are not the run's.
    """
    if ok:
        comparison = compare(before, after) if before and after else None
        return TestVerdict(failing=False, comparison=comparison)
    if not before or not after:
        return TestVerdict(failing=True)
    comparison = compare(before, after)
    text = issue_text.lower()
    named = tuple(t for t in comparison.still_failing if _short(t) and _short(t) in text)
    blamed = comparison.broken + named
    return TestVerdict(failing=bool(blamed), blamed=blamed, comparison=comparison)


def _short(test: str) -> str:
    """``tests/test_calc.py::test_add[1-2]`` → ``test_add``: how an issue names a test."""
    name = test.rsplit("::", 1)[-1].rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return name.split("[", 1)[0].lower()
